"""Reads a folder of TensorBoard event files with the tensorboard package, as TensorBoard itself loads them, for
tests/test_tensorboard.cpp. Prints one JSON object:

  files:   per events file (name order): name, records (read with the package's record reader, which checks
           both masked CRC32Cs of every record), file_version, session_start (the step of a SessionLog START)
  scalars: {tag: [[step, value], ...]} from EventAccumulator.Scalars (value null for NaN)
  texts:   {tag: [[step, text], ...]} of the summaries whose plugin is "text"

A damaged record (CRC mismatch, cut short) makes it exit 1 with the package's message.

usage: read_tensorboard.py FOLDER
"""
import json
import math
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from tensorboard.util import tensor_util


def read_records(path):
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    out = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return out
        out.append(event_pb2.Event.FromString(reader.record()))


def main():
    folder = sys.argv[1]
    files = []
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        try:
            events = read_records(os.path.join(folder, name))
        except errors.OpError as e:
            print(f"{name}: {e}", file=sys.stderr)
            sys.exit(1)
        starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == 1]
        versions = [e.file_version for e in events if e.HasField("file_version")]
        files.append({"name": name, "records": len(events), "file_version": versions[0] if versions else None,
                      "session_start": starts[0] if starts else None})

    acc = event_accumulator.EventAccumulator(
        folder, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        scalars[tag] = [[e.step, None if math.isnan(e.value) else e.value] for e in acc.Scalars(tag)]
    texts = {}
    try:
        text_tags = acc.PluginTagToContent("text")
    except KeyError:  # no text summary at all
        text_tags = {}
    for tag in text_tags:
        texts[tag] = [[e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode("utf-8")]
                      for e in acc.Tensors(tag)]
    print(json.dumps({"files": files, "scalars": scalars, "texts": texts}))


if __name__ == "__main__":
    main()
