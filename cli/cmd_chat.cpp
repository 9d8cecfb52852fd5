// `owl2 chat`: a multi-turn conversation on stdin with the model's chat template (spec §3.4, §6): the whole
// conversation is re-encoded every turn and a message's images go in front of it with no newline, as the
// reference CLI does; `/image PATH` attaches an image to the next message (`/video PATH` the clip's
// data.video_frames frames), `/reset` starts over, `/quit` (or end
// of input) leaves. Works with stdin not a terminal.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/device_arg.h"
#include "cli/generate_args.h"
#include "cli/model_args.h"
#include "data/image.h"
#include "data/video.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "owl2/infer/generate.h"

namespace owl2::cli {
namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

void add_chat_commands(CLI::App& app, Action& run) {
  struct Args {
    ModelDirArgs model;
    std::string image, mode, device;
    DecodingArgs decoding;
  };
  auto args = std::make_shared<Args>();

  auto* chat = app.add_subcommand("chat", "Talk to a saved model on stdin (/image PATH, /video PATH, /reset, /quit)");
  args->model.add_to(chat);
  chat->add_option("--image", args->image, "Image attached to the first message");
  chat->add_option("--image-mode", args->mode, "resize | pad | crop (default: the run's data.image_mode)");
  add_device_option(chat, args->device);
  args->decoding.add_to(chat);
  chat->callback([&run, args] {
    run = [args] {
      auto l = args->model.load(use_device_arg(args->device));
      ImageConfig ic;
      ic.size = l.cfg.model.vision.image_size;
      ic.mode = args->mode.empty() ? l.cfg.data.image_mode : parse_image_mode(args->mode);
      const auto tmpl = chat_template(l.cfg.data.chat_template);
      const bool interactive = isatty(STDIN_FILENO) != 0;

      std::vector<Turn> turns;
      std::vector<torch::Tensor> images;  // every image of the conversation, in order
      int64_t pending = 0;                // images attached to the next message
      std::string pending_slots;          // their placeholders: one per image, a clip's in data.video_layout
      auto attach = [&](const std::string& path) {
        images.push_back(preprocess_image(load_image(path), ic));  // throws naming the file
        ++pending;
        pending_slots += "<|image|>";
        std::cout << "[image attached: " << path << "]\n" << std::flush;
      };
      if (!args->image.empty()) attach(args->image);

      auto go = args->decoding.options(*l.tokenizer);
      TextStreamer streamer(*l.tokenizer, go.stop_strings, std::cout);
      if (!args->decoding.no_stream) go.on_token = [&streamer](int64_t, int64_t token) { streamer.push(token); };

      std::string line;
      while (true) {
        if (interactive) std::cout << "USER: " << std::flush;
        if (!std::getline(std::cin, line)) break;
        const auto msg = trim(line);
        if (msg.empty()) continue;
        if (msg == "/quit" || msg == "/exit") break;
        if (msg == "/reset") {
          turns.clear();
          images.clear();
          pending = 0;
          pending_slots.clear();
          std::cout << "[conversation reset]\n" << std::flush;
          continue;
        }
        if (msg.rfind("/video", 0) == 0) {  // the clip's data.video_frames frames, attached like images
          const auto path = trim(msg.substr(6));
          try {
            if (path.empty()) throw std::invalid_argument("/video needs a path: /video PATH");
            const auto clip = data::decode_video(path, l.cfg.data.video_frames);  // throws naming the file
            for (const auto& f : clip.frames) images.push_back(preprocess_image(f, ic));
            pending += static_cast<int64_t>(clip.frames.size());
            pending_slots += data::video_frame_slots(static_cast<int64_t>(clip.frames.size()), l.cfg.data.video_layout);
            std::cout << "[video attached: " << path << ", " << clip.frames.size() << " of " << clip.total
                      << " frames]\n" << std::flush;
          } catch (const std::exception& e) {
            std::cout << "error: " << e.what() << "\n" << std::flush;
          }
          continue;
        }
        if (msg.rfind("/image", 0) == 0) {
          const auto path = trim(msg.substr(6));
          try {
            if (path.empty()) throw std::invalid_argument("/image needs a path: /image PATH");
            attach(path);
          } catch (const std::exception& e) {
            std::cout << "error: " << e.what() << "\n" << std::flush;  // the conversation goes on
          }
          continue;
        }
        try {
          turns.push_back({Role::kHuman, user_message(msg, pending, pending_slots)});  // throws for a placeholder without image
        } catch (const std::exception& e) {
          std::cout << "error: " << e.what() << "\n" << std::flush;
          continue;
        }
        try {
          const auto prompt = l.tokenizer->encode_with_images(generation_prompt(tmpl, turns));
          go.max_new_tokens = fit_context(l.cfg.model, prompt, args->decoding.max_new_tokens);
          std::cout << "ASSISTANT: " << std::flush;
          const auto out = generate(l.model, {prompt}, images.empty() ? torch::Tensor() : torch::stack(images), go);
          streamer.finish(out[0].text);
          turns.push_back({Role::kGpt, trim(out[0].text)});  // the reference keeps the stripped reply
          pending = 0;
          pending_slots.clear();
        } catch (const std::exception& e) {
          turns.pop_back();
          streamer.finish("");
          std::cout << "error: " << e.what() << "\n" << std::flush;
        }
      }
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_chat_commands);

}  // namespace owl2::cli
