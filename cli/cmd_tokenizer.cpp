// `owl2 tokenizer train`: a SentencePiece model with LLaMA's special ids, trained on datasets' text.
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "data/dataset.h"
#include "data/example.h"
#include "data/template.h"
#include "data/tokenizer.h"

namespace owl2::cli {
namespace {

void strip_placeholders(std::string& s) {
  for (size_t p; (p = s.find(kImagePlaceholder)) != std::string::npos;) s.erase(p, kImagePlaceholder.size());
}

void add_tokenizer_commands(CLI::App& app, Action& run) {
  struct Args {
    std::vector<std::string> data, text;
    int64_t vocab_size = 32000;
    std::string out;
  };
  auto args = std::make_shared<Args>();
  auto* tok = app.add_subcommand("tokenizer", "SentencePiece tokenizers");
  tok->require_subcommand(1);
  auto* train = tok->add_subcommand("train", "Train a BPE SentencePiece model (unk 0, bos 1, eos 2) on text");
  train->add_option("--data", args->data, "Dataset whose captions and turns are the corpus (repeatable)");
  train->add_option("--text", args->text, "Plain text file, one sentence per line (repeatable)");
  train->add_option("--vocab-size", args->vocab_size, "Vocabulary size (an upper bound for small corpora)")
      ->check(CLI::Range(8, 1 << 20));
  train->add_option("--out", args->out, "Output prefix; writes PREFIX.model and PREFIX.vocab")->required();
  train->callback([&run, args] {
    run = [args] {
      if (args->data.empty() && args->text.empty()) throw std::invalid_argument("give --data or --text");
      std::vector<std::string> lines;
      for (const auto& path : args->data) {
        data::ReadOptions ro;
        ro.check_files = false;
        auto ds = data::open_dataset(path, ro);
        for (size_t i = 0; i < ds->size(); ++i) {
          auto s = ds->get(i);
          if (!s.caption.empty()) lines.push_back(s.caption);
          for (auto& t : s.turns) {
            strip_placeholders(t.value);
            lines.push_back(t.value);
          }
        }
      }
      for (const auto& path : args->text) {
        std::ifstream f(path);
        if (!f) throw std::runtime_error("cannot read " + path);
        for (std::string line; std::getline(f, line);) lines.push_back(line);
      }
      // The templates' fixed text is in every training sample: make sure the vocabulary covers it.
      for (const char* name : {"mplug_owl2", "vicuna_v1"}) {
        const auto t = chat_template(name);
        lines.push_back(t.system + " " + t.user + ": " + t.assistant + ":");
      }
      train_tokenizer(lines, args->vocab_size, args->out);
      const Tokenizer tok(args->out + ".model");
      std::cout << args->out << ".model: " << tok.vocab_size() << " tokens from " << lines.size() << " lines\n";
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_tokenizer_commands);

}  // namespace owl2::cli
