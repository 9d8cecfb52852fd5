// `owl2 generate`: one prompt, optionally with an image, on a saved model directory (trainers/io/model_dir.h),
// streamed to stdout token by token, or with --json printed as one JSON object for scripts and evaluation
// harnesses. The prompt is the reference CLI's first turn, "USER: <|image|>{prompt} ASSISTANT:" (spec §6;
// docs/generation.md for the layout and the JSON fields).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>
#include <optional>

#include "cli/commands.h"
#include "cli/device_arg.h"
#include "cli/generate_args.h"
#include "cli/model_args.h"
#include "data/image.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "data/video.h"
#include "owl2/infer/generate.h"

namespace owl2::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point from, Clock::time_point to) { return std::chrono::duration<double>(to - from).count(); }

const char* stop_reason(FinishReason f) {
  switch (f) {
    case FinishReason::kEos: return "eos";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
  }
  return "?";
}

// The command starts at `began`; the model, image and prompt are ready at `start`; the first new token is
// reported at `first` (unset when none was); generate() returns at `end`.
struct GenerationTimes {
  Clock::time_point began, start, end;
  std::optional<Clock::time_point> first;
};

// load_s: model, image and prompt. ttft_s: start of generation (image encoding and prefill included) to the first new token, or to the end when
// the answer is empty. tokens_per_s: the decode steps after the first token (one per further token, plus the one
// that chose EOS) per second. Beam search chooses its tokens when the search ends, so there ttft_s is the whole
// search and tokens_per_s is new tokens over the whole search.
nlohmann::json timings_json(const GenerationTimes& t, const Generation& g, bool beams) {
  const auto n = static_cast<int64_t>(g.tokens.size());
  const double total = seconds(t.start, t.end);
  nlohmann::json j = {{"load_s", seconds(t.began, t.start)},
                      {"ttft_s", total}, {"total_s", total}, {"tokens_per_s", nullptr}};
  if (beams || !t.first) {
    if (n > 0 && total > 0) j["tokens_per_s"] = static_cast<double>(n) / total;
    return j;
  }
  j["ttft_s"] = seconds(t.start, *t.first);
  const int64_t steps = n - 1 + (g.finish == FinishReason::kEos ? 1 : 0);
  const double decode = seconds(*t.first, t.end);
  if (steps > 0 && decode > 0) j["tokens_per_s"] = static_cast<double>(steps) / decode;
  return j;
}

void add_generate_commands(CLI::App& app, Action& run) {
  struct Args {
    ModelDirArgs model;
    std::string image, video, prompt;
    std::string mode, device;
    int64_t frames = 0;
    DecodingArgs decoding;
    bool json = false;
  };
  auto args = std::make_shared<Args>();

  auto* gen = app.add_subcommand("generate", "Answer one prompt with a saved model (greedy, sampling or beams)");
  args->model.add_to(gen);
  gen->add_option("--prompt", args->prompt, "The user's message")->required();
  gen->add_option("--image", args->image, "Image file shown with the prompt");
  auto* video = gen->add_option("--video", args->video,
                                "Video file shown with the prompt: its --frames sampled frames, each an image "
                                "placeholder, all before the text (docs/datasets.md, \"Video\")");
  video->excludes(gen->get_option("--image"));
  gen->add_option("--frames", args->frames, "Frames sampled from --video (default: the model's data.video_frames)")
      ->check(CLI::PositiveNumber);
  gen->add_option("--image-mode", args->mode, "resize | pad | crop (default: the run's data.image_mode)");
  gen->add_flag("--json", args->json,
                "Print one JSON object (prompt and generated ids, text, log-probs, stop reason, timings) "
                "instead of streaming the text");
  add_device_option(gen, args->device);
  args->decoding.add_to(gen);
  gen->callback([&run, args] {
    run = [args] {
      GenerationTimes times;
      times.began = Clock::now();
      auto l = args->model.load(use_device_arg(args->device));
      ImageConfig ic;
      ic.size = l.cfg.model.vision.image_size;
      ic.mode = args->mode.empty() ? l.cfg.data.image_mode : parse_image_mode(args->mode);
      torch::Tensor images;
      std::string slots;  // the images' placeholders: one, or a clip's frames in data.video_layout
      if (!args->image.empty()) images = preprocess_image(load_image(args->image), ic).unsqueeze(0);
      if (!args->video.empty()) {
        std::vector<torch::Tensor> frames;
        for (const auto& f : data::decode_video(args->video, args->frames > 0 ? args->frames : l.cfg.data.video_frames).frames)
          frames.push_back(preprocess_image(f, ic));
        images = torch::stack(frames);
        slots = data::video_frame_slots(images.size(0), l.cfg.data.video_layout);
      }
      // The reference CLI's first turn: "USER: <|image|>{prompt} ASSISTANT:" (spec §6).
      const int64_t attached = images.defined() ? images.size(0) : 0;
      const std::string text = generation_prompt(
          chat_template(l.cfg.data.chat_template),
          {{Role::kHuman, slots.empty() ? user_message(args->prompt, attached) : user_message(args->prompt, attached, slots)}});
      const auto prompt = l.tokenizer->encode_with_images(text);
      auto go = args->decoding.options(*l.tokenizer);
      go.max_new_tokens = fit_context(l.cfg.model, prompt, go.max_new_tokens);
      if (!args->json) {
        TextStreamer streamer(*l.tokenizer, go.stop_strings, std::cout);
        if (!args->decoding.no_stream) go.on_token = [&streamer](int64_t, int64_t token) { streamer.push(token); };
        const auto out = generate(l.model, {prompt}, images, go);
        streamer.finish(out[0].text);
        return 0;
      }
      go.logprobs = true;
      go.on_token = [&times](int64_t, int64_t) {
        if (!times.first) times.first = Clock::now();  // after the token's host sync: the time it was known
      };
      times.start = Clock::now();
      const auto out = generate(l.model, {prompt}, images, go)[0];
      times.end = Clock::now();
      const nlohmann::json j = {{"prompt", text},
                                {"prompt_ids", prompt},
                                {"image", args->image.empty() ? nlohmann::json(nullptr) : nlohmann::json(args->image)},
                                {"video", args->video.empty() ? nlohmann::json(nullptr) : nlohmann::json(args->video)},
                                {"generated_ids", out.tokens},
                                {"text", out.text},
                                {"logprobs", out.logprobs},
                                {"eos_logprob", out.eos_logprob},  // NaN (not EOS) is written as null
                                {"stop_reason", stop_reason(out.finish)},
                                {"timings", timings_json(times, out, go.num_beams > 1)}};
      // A token cut inside a UTF-8 character leaves invalid bytes: written as U+FFFD rather than failing.
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_generate_commands);

}  // namespace owl2::cli
