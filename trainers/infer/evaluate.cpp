// Held-out evaluation; see evaluate.h.
#include "trainers/infer/evaluate.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>

#include "data/template.h"
#include "eval/benchmarks.h"
#include "eval/caption_metrics.h"
#include "eval/ptb_tokenizer.h"
#include "owl2/infer/generate.h"

namespace owl2 {

std::vector<HeldoutQuestion> read_heldout(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read held-out questions " + path);
  const auto dir = std::filesystem::path(path).parent_path();
  std::vector<HeldoutQuestion> out;
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const auto j = nlohmann::json::parse(line);
      HeldoutQuestion q;
      q.id = j.at("question_id").get<int64_t>();
      if (j.contains("image")) {
        q.image = (dir / j.at("image").get<std::string>()).string();
        // Checked up front, so that a training run learns of a missing image before it trains, not at its
        // first evaluation.
        if (!std::filesystem::is_regular_file(q.image))
          throw std::runtime_error(fmt::format("{}:{}: question {}: no image file {}", path, n, j.value("question_id", 0), q.image));
      }
      q.prompt = j.at("prompt").get<std::string>();
      q.answer = j.at("answer").get<std::string>();
      q.type = j.at("type").get<std::string>();
      out.push_back(std::move(q));
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(fmt::format("{}:{}: {}", path, n, e.what()));
    }
  }
  return out;
}

std::string normalize_answer(const std::string& text) {
  std::string s;
  for (char c : text) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto a = s.find_first_not_of(" \t\n");
  if (a == std::string::npos) return "";
  s = s.substr(a, s.find_last_not_of(" \t\n") - a + 1);
  while (!s.empty() && (s.back() == '.' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string EvalResult::table() const {
  std::string t = fmt::format("{:<16} {:>9} {:>10}\n", "question type", "questions", "accuracy");
  for (const auto& [type, acc] : accuracy) t += fmt::format("{:<16} {:>9} {:>9.1f}%\n", type, count.at(type), 100 * acc);
  t += fmt::format("{:<16} {:>9} {:>9.1f}%\n", "short answers", "", 100 * short_answer_accuracy);
  t += fmt::format("{:<16} {:>9} {:>10.1f}\n", "caption CIDEr", "", 100 * caption_cider);
  return t;
}

std::string EvalResult::markdown() const {
  std::string t = "| question type | questions | accuracy |\n|---|---:|---:|\n";
  for (const auto& [type, acc] : accuracy) t += fmt::format("| {} | {} | {:.1f}% |\n", type, count.at(type), 100 * acc);
  t += fmt::format("| short answers | | {:.1f}% |\n", 100 * short_answer_accuracy);
  t += fmt::format("| caption CIDEr | | {:.1f} |\n", 100 * caption_cider);
  return t;
}

EvalResult evaluate_heldout(MPLUGOwl2ForCausalLM& model, const Tokenizer& tokenizer,
                            const std::vector<HeldoutQuestion>& all, const EvalOptions& options) {
  std::vector<HeldoutQuestion> qs = all;
  if (options.limit > 0 && static_cast<int64_t>(qs.size()) > options.limit) qs.resize(static_cast<size_t>(options.limit));
  const auto answers = answer_heldout(model, tokenizer, qs, options);
  std::vector<std::pair<HeldoutQuestion, std::string>> predictions;
  for (size_t i = 0; i < qs.size(); ++i) predictions.emplace_back(qs[i], answers[i]);
  return score_heldout(std::move(predictions));
}

std::vector<std::string> answer_heldout(MPLUGOwl2ForCausalLM& model, const Tokenizer& tokenizer,
                                        const std::vector<HeldoutQuestion>& qs, const EvalOptions& options,
                                        const Lockstep* lockstep, int64_t batches) {
  const bool was_training = model->is_training();
  model->eval();
  const auto tmpl = chat_template(options.chat_template);
  std::vector<std::string> out;
  GenerateOptions gen;
  gen.max_new_tokens = options.max_new_tokens;
  gen.eos_id = Tokenizer::kEosId;
  gen.vocab_limit = tokenizer.vocab_size();  // a model vocabulary larger than the tokenizer's: never an undecodable id
  gen.pad_id = Tokenizer::kPadId;
  const auto bs = static_cast<size_t>(options.batch_size);
  const size_t own = (qs.size() + bs - 1) / bs;
  const size_t rounds = lockstep ? std::max(own, static_cast<size_t>(std::max<int64_t>(batches, 0))) : own;
  for (size_t round = 0, start = 0; round < rounds; ++round, start += bs) {
    const size_t end = std::min(qs.size(), start + bs);
    std::vector<std::vector<int64_t>> prompts;
    std::vector<torch::Tensor> images;
    std::vector<size_t> unreadable;  // questions whose image did not decode: answered on a blank image, then ""
    for (size_t i = start; i < end; ++i) {
      const auto& q = qs[i];
      const std::string human = q.image.empty() ? q.prompt : std::string(kImagePlaceholder) + "\n" + q.prompt;
      // The layout the run trained on ("<|image|>\n" + question), not the reference CLI's (docs/generation.md).
      prompts.push_back(
          tokenizer.encode_with_images(generation_prompt(tmpl, {{Role::kHuman, human}}, ImageLayout::kTraining)));
      if (q.image.empty()) continue;
      try {
        images.push_back(preprocess_image(load_image(q.image), options.image));
      } catch (const std::exception& e) {
        // One bad file must not end a training run (nor, under ZeRO 3, leave the other ranks waiting in a
        // collective): the question keeps its place in the batch and gets an empty answer, scored as wrong.
        std::cerr << fmt::format("held-out question {}: unreadable image, answered as empty: {}\n", q.id, e.what());
        images.push_back(torch::zeros({3, options.image.size, options.image.size}));
        unreadable.push_back(i);
      }
    }
    const auto images_NCHW = images.empty() ? torch::Tensor() : torch::stack(images);
    std::vector<std::vector<int64_t>> answers;
    if (lockstep) {
      for (auto& g : generate_in_lockstep(model, prompts, images_NCHW, gen, *lockstep)) answers.push_back(std::move(g.tokens));
    } else {
      answers = greedy_generate(model, prompts, images_NCHW, gen);
    }
    for (size_t i = start; i < end; ++i) {
      const bool bad = std::find(unreadable.begin(), unreadable.end(), i) != unreadable.end();
      out.push_back(bad ? std::string() : tokenizer.decode(answers[i - start]));
    }
  }
  if (was_training) model->train();
  return out;
}

EvalResult score_heldout(std::vector<std::pair<HeldoutQuestion, std::string>> predictions) {
  EvalResult res;
  res.predictions = std::move(predictions);
  std::map<std::string, int64_t> correct;
  eval::CaptionSet captions;
  for (const auto& [q, pred] : res.predictions) {
    ++res.count[q.type];
    if (q.type == "caption") {
      captions.hyps.push_back(eval::coco_tokenize(pred));
      captions.refs.push_back({eval::coco_tokenize(q.answer)});
      continue;
    }
    bool ok;
    if (q.type == "mc") {
      const auto letter = eval::parse_choice_letter(pred, 4);
      ok = letter && std::toupper(static_cast<unsigned char>(q.answer[0])) == *letter;
    } else {
      ok = normalize_answer(pred) == normalize_answer(q.answer);
    }
    correct[q.type] += ok ? 1 : 0;
  }
  int64_t short_n = 0, short_ok = 0;
  for (const auto& [type, n] : res.count) {
    if (type == "caption") continue;
    res.accuracy[type] = double(correct[type]) / double(n);
    if (type == "color" || type == "shape" || type == "position" || type == "count" || type == "yesno") {
      short_n += n;
      short_ok += correct[type];
    }
  }
  res.short_answer_accuracy = short_n > 0 ? double(short_ok) / double(short_n) : 0;
  if (!captions.hyps.empty()) res.caption_cider = eval::cider_d(captions).corpus;
  return res;
}

}  // namespace owl2
