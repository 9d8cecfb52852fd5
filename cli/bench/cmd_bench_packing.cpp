// `owl2 bench packing`: the same samples trained (forward + backward) as padded batches, modality-grouped padded
// batches and packed rows at the same tokens per step, side by side in one run: pad fraction, useful (non-pad)
// decoder tokens per second and samples per second. Sample lengths come from a committed length histogram
// (configs/bench/llava665k_lengths.json by default) or from a dataset (e.g. the demo's).
#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <random>

#include "cli/bench/bench_common.h"
#include "cli/commands.h"
#include "cli/device_arg.h"
#include "data/example.h"
#include "data/loader.h"
#include "data/rng.h"
#include "owl2/infer/device.h"
#include "owl2/model/constants.h"
#include "owl2/model/model.h"
#include "trainers/config.h"
#include "trainers/setup.h"

namespace owl2::cli {
namespace {

struct PackingArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string lengths;    // histogram JSON
  std::string dataset;    // or: a dataset's own lengths (needs --tokenizer)
  std::string tokenizer;
  std::string device = "cpu";
  int64_t samples = 160;
  uint64_t seed = 0;
  int threads = 0;
  int64_t group_window = 32;
  int64_t repeats = 3;  // the grouped strategy's sorting window, in batches (the loader's default)
};

struct Shape {
  int64_t text_tokens = 0;
  int64_t images = 0;
};

std::vector<Shape> shapes_from_histogram(const std::string& path, int64_t n, uint64_t seed) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open the length histogram", path));
  const auto j = nlohmann::json::parse(f, nullptr, false);
  if (j.is_discarded() || !j.contains("bins") || !j["bins"].is_array() || j["bins"].empty())
    throw std::runtime_error(fmt::format("{}: expected a JSON object with a non-empty 'bins' array", path));
  std::vector<double> weights;
  std::vector<Shape> lo, hi;
  for (size_t b = 0; b < j["bins"].size(); ++b) {
    const auto& bin = j["bins"][b];
    const auto where = fmt::format("{}: bins[{}]", path, b);
    if (!bin.contains("samples") || !bin["samples"].is_number() || !bin.contains("images") ||
        !bin["images"].is_number_integer() || !bin.contains("text_tokens") || !bin["text_tokens"].is_array() ||
        bin["text_tokens"].size() != 2)
      throw std::runtime_error(where + ": expected samples (number), images (integer), text_tokens ([lo, hi])");
    const int64_t a = bin["text_tokens"][0].get<int64_t>(), z = bin["text_tokens"][1].get<int64_t>();
    if (a < 3 || z < a) throw std::runtime_error(fmt::format("{}: text_tokens [{}, {}] must satisfy 3 <= lo <= hi", where, a, z));
    weights.push_back(bin["samples"].get<double>());
    lo.push_back({a, bin["images"].get<int64_t>()});
    hi.push_back({z, bin["images"].get<int64_t>()});
  }
  std::mt19937_64 rng(seed);
  std::discrete_distribution<size_t> pick(weights.begin(), weights.end());
  std::vector<Shape> out;
  for (int64_t i = 0; i < n; ++i) {
    const size_t b = pick(rng);
    std::uniform_int_distribution<int64_t> len(lo[b].text_tokens, hi[b].text_tokens);
    out.push_back({len(rng), lo[b].images});
  }
  return out;
}

std::vector<Shape> shapes_from_dataset(const PackingArgs& a, const RunConfig& cfg) {
  const std::string tokenizer = a.tokenizer.empty() ? cfg.data.tokenizer : a.tokenizer;
  if (tokenizer.empty()) throw std::invalid_argument("--dataset needs --tokenizer (or data.tokenizer in the config)");
  const auto ds = data::open_dataset(a.dataset);
  ExampleOptions eo;
  eo.chat_template = cfg.data.chat_template;
  const ExampleBuilder builder(std::make_shared<const Tokenizer>(tokenizer), eo);
  data::Rng rng(data::mix_seed(a.seed, 0, 3));
  const auto order = data::permutation(ds->size(), rng);
  std::vector<Shape> out;
  for (size_t k = 0; k < order.size() && static_cast<int64_t>(out.size()) < a.samples; ++k) {
    const auto s = ds->text(order[k]);
    const auto images = static_cast<int64_t>(s.image_paths.size());
    out.push_back({builder.spliced_tokens(s, 1) - images, images});  // 1 token per image: placeholders only
  }
  return out;
}

// A sample of `shape` with random ids: <s>, its image placeholders, then text; the second half supervised. Cut
// to `max_tokens` decoder tokens (text first, then images), as the truncate policy would.
Example make_example(Shape shape, int64_t V, int64_t vocab, int64_t max_tokens, std::mt19937_64& rng) {
  shape.images = std::min(shape.images, std::max<int64_t>(0, (max_tokens - 3) / V));
  shape.text_tokens = std::min(shape.text_tokens, max_tokens - shape.images * V);
  std::uniform_int_distribution<int64_t> id(3, vocab - 1);
  Example e;
  e.input_ids.push_back(1);
  e.labels.push_back(kIgnoreIndex);
  for (int64_t i = 0; i < shape.images; ++i) {
    e.input_ids.push_back(kImageTokenIndex);
    e.labels.push_back(kIgnoreIndex);
  }
  for (int64_t t = 1; t < shape.text_tokens; ++t) {
    e.input_ids.push_back(id(rng));
    e.labels.push_back(2 * t >= shape.text_tokens ? e.input_ids.back() : kIgnoreIndex);
  }
  return e;
}

// The samples as a dataset for the loader's planners: info() gives modality and decoder length.
class ShapeSet : public data::Dataset {
 public:
  ShapeSet(std::vector<int64_t> lengths, std::vector<int> images) : len_(std::move(lengths)), img_(std::move(images)) {}
  size_t size() const override { return len_.size(); }
  const std::string& name() const override { return name_; }
  data::SampleInfo info(size_t i) const override { return {img_.at(i), len_.at(i)}; }
  data::RawSample get(size_t) const override { throw std::logic_error("bench packing: samples are built in memory"); }

 private:
  std::vector<int64_t> len_;
  std::vector<int> img_;
  std::string name_ = "bench";
};

struct Outcome {
  std::string name;
  int64_t batches = 0, samples = 0, real_tokens = 0, slot_tokens = 0;
  double seconds = 0;
  nlohmann::json to_json() const {
    return {{"strategy", name}, {"batches", batches}, {"samples", samples}, {"useful_tokens", real_tokens},
            {"slot_tokens", slot_tokens},
            {"pad_fraction", slot_tokens > 0 ? 1.0 - double(real_tokens) / double(slot_tokens) : 0.0},
            {"seconds", seconds}, {"useful_tokens_per_s", seconds > 0 ? double(real_tokens) / seconds : 0.0},
            {"samples_per_s", seconds > 0 ? double(samples) / seconds : 0.0}};
  }
};

int run_bench_packing(const PackingArgs& a) {
  RunConfig cfg = load_config(a.config, a.sets);
  if (a.threads > 0) torch::set_num_threads(a.threads);
  const torch::Device device = use_device_arg(a.device);
  const int64_t pack = cfg.data.pack_tokens, rows = cfg.train.micro_batch_size;
  if (pack <= 0) throw std::invalid_argument(fmt::format("{}: data.pack_tokens must be > 0 for the packed strategy", a.config));
  if (a.samples < 1) throw std::invalid_argument("--samples must be >= 1");
  const int64_t V = cfg.model.visual_tokens_per_image(), vocab = cfg.model.decoder.vocab_size;

  const auto shapes = a.dataset.empty() ? shapes_from_histogram(a.lengths, a.samples, a.seed) : shapes_from_dataset(a, cfg);
  std::mt19937_64 rng(a.seed + 1);
  std::vector<Example> examples;
  std::vector<int64_t> lengths;
  std::vector<int> images;
  for (const auto& s : shapes) {
    examples.push_back(make_example(s, V, vocab, std::min(pack, cfg.train.max_length), rng));
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(a.seed + 2);
  for (size_t k = 0; k < examples.size(); ++k) {
    int64_t n = 0;
    for (int64_t id : examples[k].input_ids) n += id == kImageTokenIndex;
    images.push_back(static_cast<int>(n));
    for (int64_t i = 0; i < n; ++i)
      examples[k].images.push_back(torch::randn({3, cfg.model.vision.image_size, cfg.model.vision.image_size}, gen));
    lengths.push_back(spliced_length(examples[k], V));
  }
  const ShapeSet set(lengths, images);
  double mean = 0;
  for (int64_t l : lengths) mean += double(l) / double(lengths.size());
  // The padded strategies take as many samples per batch as fill rows x pack_tokens on average.
  const auto per_batch = static_cast<size_t>(std::max<int64_t>(1, std::llround(double(rows * pack) / mean)));

  data::LoaderOptions o;
  o.seed = a.seed;
  o.batch_size = per_batch;
  const auto padded = data::plan_epoch(set, o, 0);
  o.group_by_modality = true;
  o.group_window = static_cast<size_t>(std::max<int64_t>(1, a.group_window));
  const auto grouped = data::plan_epoch(set, o, 0);
  o.group_by_modality = cfg.data.group_by_modality;
  o.batch_size = static_cast<size_t>(rows);
  o.pack_tokens = pack;
  o.pack_buffer = static_cast<size_t>(cfg.data.pack_buffer);
  const auto packed = data::plan_packed_epoch(set, o, 0, lengths);

  MPLUGOwl2ForCausalLM model = build_model(cfg, {.device = device, .load_init = false});
  model->train();
  const auto step = [&](const Batch& host) {
    ModelInputs in{host.input_ids.to(device), host.attention_mask.to(device),
                   host.images.defined() ? host.images.to(device) : torch::Tensor(), host.labels.to(device)};
    if (host.segment_ids.defined()) in.segment_ids = host.segment_ids.to(device);
    model->zero_grad();
    model->forward(in).loss_sum.backward();
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  const auto slots = [&](const Batch& b) {
    // Decoder positions the batch occupies: rows x the longest spliced row.
    int64_t longest = 0;
    const auto ids = b.input_ids.contiguous();
    for (int64_t r = 0; r < ids.size(0); ++r) {
      const auto row = ids[r];
      const int64_t real = b.attention_mask[r].sum().item<int64_t>();
      const int64_t imgs = row.eq(kImageTokenIndex).sum().item<int64_t>();
      longest = std::max(longest, real + imgs * (V - 1));
    }
    return ids.size(0) * longest;
  };
  const auto gather = [&](const std::vector<size_t>& idx) {
    std::vector<Example> v;
    for (size_t i : idx) v.push_back(examples[i]);
    return v;
  };
  const auto run = [&](const std::string& name, const std::vector<Batch>& batches) {
    step(batches.front());  // warm-up, untimed
    Outcome out{name};
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& b : batches) step(b);
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const auto& b : batches) {
      ++out.batches;
      out.samples += b.samples;
      out.slot_tokens += slots(b);
    }
    return out;
  };
  int64_t useful = 0;
  for (int64_t l : lengths) useful += l;
  std::vector<Batch> pb, gb, kb;
  for (const auto& idx : padded) pb.push_back(collate(gather(idx)));
  for (const auto& idx : grouped) gb.push_back(collate(gather(idx)));
  for (const auto& batch : packed) {
    std::vector<size_t> idx, row_of;
    for (size_t r = 0; r < batch.size(); ++r)
      for (size_t i : batch[r]) {
        idx.push_back(i);
        row_of.push_back(r);
      }
    kb.push_back(collate_packed(gather(idx), row_of));
  }
  // Interleaved repeats, the fastest of each kept: robust to a machine that is busy part of the time.
  std::vector<Outcome> results;
  for (int64_t rep = 0; rep < std::max<int64_t>(1, a.repeats); ++rep) {
    std::vector<Outcome> now{run("padded", pb), run("grouped", gb), run("packed", kb)};
    if (results.empty()) results = now;
    for (size_t k = 0; k < now.size(); ++k) results[k].seconds = std::min(results[k].seconds, now[k].seconds);
  }
  for (auto& r : results) r.real_tokens = useful;

  nlohmann::json j;
  j["config"] = a.config;
  j["lengths"] = a.dataset.empty() ? a.lengths : a.dataset;
  j["device"] = describe_device(device);
  j["threads"] = torch::get_num_threads();
  j["samples"] = static_cast<int64_t>(examples.size());
  j["mean_tokens"] = mean;
  j["pack_tokens"] = pack;
  j["rows_per_batch"] = rows;
  j["padded_samples_per_batch"] = per_batch;
  j["group_window"] = a.group_window;
  j["repeats"] = a.repeats;
  for (const auto& r : results) j["strategies"].push_back(r.to_json());
  const auto rate = [&](size_t k) { return results[k].seconds > 0 ? double(useful) / results[k].seconds : 0.0; };
  j["packed_over_grouped"] = rate(1) > 0 ? rate(2) / rate(1) : 0.0;
  j["packed_over_padded"] = rate(0) > 0 ? rate(2) / rate(0) : 0.0;
  std::cout << j.dump() << "\n";
  std::cerr << fmt::format("bench packing: {} samples of mean {:.0f} tokens, {} rows x {} tokens per step ({} samples "
                           "per padded batch), {} threads\n",
                           examples.size(), mean, rows, pack, per_batch, torch::get_num_threads());
  for (const auto& r : results) {
    const auto s = r.to_json();
    std::cerr << fmt::format("  {:8s} {:4d} batches  pad {:5.1f}%  {:8.0f} useful tokens/s  {:6.2f} samples/s\n", r.name,
                             r.batches, 100 * s["pad_fraction"].get<double>(), s["useful_tokens_per_s"].get<double>(),
                             s["samples_per_s"].get<double>());
  }
  std::cerr << fmt::format("  packed / grouped {:.2f}x, packed / padded {:.2f}x (useful tokens/s)\n",
                           j["packed_over_grouped"].get<double>(), j["packed_over_padded"].get<double>());
  return 0;
}

void add_bench_packing(CLI::App& app, Action& run) {
  CLI::App* bench = bench_group(app);
  auto args = std::make_shared<PackingArgs>();
  auto* cmd = bench->add_subcommand(
      "packing", "Padded, modality-grouped and packed batches of the same samples: pad fraction and useful tokens/s");
  args->config = (source_root() / "configs" / "bench" / "packing.yaml").string();
  args->lengths = (source_root() / "configs" / "bench" / "llava665k_lengths.json").string();
  cmd->add_option("--config", args->config, "Run config: model, data.pack_tokens, data.pack_buffer, train.micro_batch_size "
                                            "(rows per step)")->capture_default_str();
  cmd->add_option("--set", args->sets, "Override a key: --set data.pack_tokens=1024 (repeatable)");
  cmd->add_option("--lengths", args->lengths, "Length histogram JSON (bins of samples, images, text_tokens)")
      ->capture_default_str();
  cmd->add_option("--dataset", args->dataset, "Take the lengths of this dataset's samples instead (e.g. the demo's "
                                              "llava_train.json)");
  cmd->add_option("--tokenizer", args->tokenizer, "SentencePiece model for --dataset (default: data.tokenizer)");
  cmd->add_option("--group-window", args->group_window,
                  "Grouped strategy: batches per length-sorting window (default 32, the loader's; LLaVA sorts within "
                  "one global batch, i.e. the number of ranks)");
  cmd->add_option("--samples", args->samples, "Samples drawn (default 160)");
  cmd->add_option("--repeats", args->repeats, "Timed passes over the samples per strategy, interleaved; the fastest "
                                              "counts (default 3)");
  cmd->add_option("--seed", args->seed, "Seed of the draw and the batch order (default 0)");
  add_device_option(cmd, args->device, "cpu");
  cmd->add_option("--threads", args->threads, "Intra-op CPU threads (default: LibTorch's)");
  cmd->callback([&run, args] { run = [args] { return run_bench_packing(*args); }; });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_bench_packing);

}  // namespace owl2::cli
