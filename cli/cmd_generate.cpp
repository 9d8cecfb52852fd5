// `owl2 generate`: one prompt, optionally with an image, on a saved model directory (trainers/model_dir.h).
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/commands.h"
#include "data/image.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "owl2/generate.h"
#include "trainers/model_dir.h"

namespace owl2::cli {
namespace {

void add_generate_commands(CLI::App& app, Action& run) {
  struct Args {
    std::string model, tokenizer, image, prompt;
    int64_t max_new_tokens = 64;
    std::string mode;
  };
  auto args = std::make_shared<Args>();

  auto* gen = app.add_subcommand("generate", "Answer one prompt (greedy) with a saved model");
  gen->add_option("--model", args->model, "Model directory (a run's final/ folder)")->required();
  gen->add_option("--prompt", args->prompt, "The user's message")->required();
  gen->add_option("--image", args->image, "Image file shown with the prompt");
  gen->add_option("--tokenizer", args->tokenizer, "SentencePiece model (default: the run's data.tokenizer)");
  gen->add_option("--max-new-tokens", args->max_new_tokens, "Tokens to generate at most")->check(CLI::PositiveNumber);
  gen->add_option("--image-mode", args->mode, "resize | pad | crop (default: the run's data.image_mode)");
  gen->callback([&run, args] {
    run = [args] {
      auto l = owl2::load_model_dir(args->model, args->tokenizer);
      ImageConfig ic;
      ic.size = l.cfg.model.vision.image_size;
      ic.mode = parse_image_mode(args->mode.empty() ? l.cfg.data.image_mode : args->mode);
      const std::string human = args->image.empty() ? args->prompt : std::string(kImagePlaceholder) + "\n" + args->prompt;
      const auto prompt =
          l.tokenizer->encode_with_images(generation_prompt(chat_template(l.cfg.data.chat_template), {{Role::kHuman, human}}, true));
      torch::Tensor images;
      if (!args->image.empty()) images = preprocess_image(load_image(args->image), ic).unsqueeze(0);
      GenerateOptions go;
      go.max_new_tokens = args->max_new_tokens;
      const auto out = greedy_generate(l.model, {prompt}, images, go);
      std::cout << l.tokenizer->decode(out[0]) << "\n";
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_generate_commands);

}  // namespace owl2::cli
