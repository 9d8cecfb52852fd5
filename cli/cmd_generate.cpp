// `owl2 generate`: one prompt, optionally with an image, on a saved model directory (trainers/io/model_dir.h),
// streamed to stdout token by token (spec §6 for the template, stop string and defaults).
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "cli/device_arg.h"
#include "cli/generate_args.h"
#include "cli/model_args.h"
#include "data/image.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "owl2/infer/generate.h"

namespace owl2::cli {
namespace {

void add_generate_commands(CLI::App& app, Action& run) {
  struct Args {
    ModelDirArgs model;
    std::string image, prompt;
    std::string mode, device;
    DecodingArgs decoding;
  };
  auto args = std::make_shared<Args>();

  auto* gen = app.add_subcommand("generate", "Answer one prompt with a saved model (greedy, sampling or beams)");
  args->model.add_to(gen);
  gen->add_option("--prompt", args->prompt, "The user's message")->required();
  gen->add_option("--image", args->image, "Image file shown with the prompt");
  gen->add_option("--image-mode", args->mode, "resize | pad | crop (default: the run's data.image_mode)");
  add_device_option(gen, args->device);
  args->decoding.add_to(gen);
  gen->callback([&run, args] {
    run = [args] {
      auto l = args->model.load(use_device_arg(args->device));
      ImageConfig ic;
      ic.size = l.cfg.model.vision.image_size;
      ic.mode = args->mode.empty() ? l.cfg.data.image_mode : parse_image_mode(args->mode);
      torch::Tensor images;
      if (!args->image.empty()) images = preprocess_image(load_image(args->image), ic).unsqueeze(0);
      // The reference CLI's first turn: "USER: <|image|>{prompt} ASSISTANT:" (spec §6).
      const std::string text = generation_prompt(
          chat_template(l.cfg.data.chat_template), {{Role::kHuman, user_message(args->prompt, images.defined() ? 1 : 0)}});
      const auto prompt = l.tokenizer->encode_with_images(text);
      auto go = args->decoding.options(*l.tokenizer);
      go.max_new_tokens = fit_context(l.cfg.model, prompt, go.max_new_tokens);
      TextStreamer streamer(*l.tokenizer, go.stop_strings, std::cout);
      if (!args->decoding.no_stream) go.on_token = [&streamer](int64_t, int64_t token) { streamer.push(token); };
      const auto out = generate(l.model, {prompt}, images, go);
      streamer.finish(out[0].text);
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_generate_commands);

}  // namespace owl2::cli
