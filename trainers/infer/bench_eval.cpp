// The model loop of `owl2 eval --bench`; see bench_eval.h. Readers, prompts and scoring are in eval/bench_suite.
#include "trainers/infer/bench_eval.h"

#include <fmt/format.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "data/video.h"
#include "eval/bench_suite.h"
#include "owl2/infer/generate.h"
#include "trainers/parallel/distributed.h"

namespace owl2 {
namespace {

std::string strip(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\n\r\v\f");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\n\r\v\f") - a + 1);
}

torch::Tensor load_item_image(const eval::BenchImage& img, const ImageConfig& cfg) {
  const auto rgb_HW3 = img.bytes.empty() ? load_image(img.path) : decode_image(img.bytes, img.path);
  return preprocess_image(rgb_HW3, cfg);
}

std::string summary_table(const eval::BenchDef& def, const eval::BenchScore& s, const BenchRunResult& r,
                          int64_t generated_total) {
  std::string t =
      fmt::format("{:<12} {:>9} {:>9} {:>7}  {}\n", "benchmark", "questions", "generated", "cached", s.headline_name);
  t += fmt::format("{:<12} {:>9} {:>9} {:>7}  {}\n", def.name, r.questions, generated_total,
                   r.questions - generated_total, s.has_score ? fmt::format("{:.2f}", s.headline) : "-");
  return t;
}

}  // namespace

std::string bench_item_prompt(const eval::BenchItem& it, VideoLayout layout) {
  if (it.video.empty() || it.video_pick || layout == VideoLayout::kFramesFirst) return it.prompt;
  std::string run;
  for (int64_t k = 0; k < it.video_frames; ++k) run += "<|image|>";
  std::string prompt = it.prompt;
  const auto at = prompt.find(run);
  if (at == std::string::npos)
    throw std::logic_error(fmt::format("benchmark item {}: no {} frame placeholders in its prompt", it.id, it.video_frames));
  return prompt.replace(at, run.size(), data::video_frame_slots(it.video_frames, layout));
}

BenchRunResult run_benchmark(MPLUGOwl2ForCausalLM& model, const Tokenizer& tokenizer, const BenchRunOptions& options,
                             Comm* comm) {
  const eval::BenchDef& def = eval::find_bench(options.bench);
  const auto items = eval::limit_groups(def.read(options.data_dir), options.limit);
  const std::string dir = (std::filesystem::path(options.out_dir) / def.name).string();
  const int64_t rank = comm ? comm->rank() : 0, world = comm ? comm->world_size() : 1;
  BenchRunResult res;
  res.questions = static_cast<int64_t>(items.size());

  // This rank's questions that no cache file answers yet.
  const auto cache = eval::read_prediction_cache(dir);
  std::vector<size_t> todo;
  for (size_t i : eval::shard_indices(items.size(), rank, world)) {
    if (cache.count(items[i].id))
      ++res.cached;
    else
      todo.push_back(i);
  }

  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  GenerateOptions gen;
  gen.max_new_tokens = def.decoding.max_new_tokens;
  gen.min_new_tokens = def.decoding.min_new_tokens;  // the captions need 8 (spec §5.2)
  gen.eos_id = Tokenizer::kEosId;
  gen.vocab_limit = tokenizer.vocab_size();
  gen.pad_id = Tokenizer::kPadId;
  const std::string cache_file = eval::rank_cache_path(dir, rank);
  const size_t batch = static_cast<size_t>(std::max<int64_t>(1, options.batch_size));
  for (size_t start = 0; start < todo.size(); start += batch) {
    const size_t end = std::min(todo.size(), start + batch);
    std::vector<std::vector<int64_t>> prompts;
    std::vector<torch::Tensor> images;
    for (size_t k = start; k < end; ++k) {
      const auto& it = items[todo[k]];
      prompts.push_back(tokenizer.encode_with_images(bench_item_prompt(it, options.video_layout)));
      for (const auto& img : it.images) images.push_back(load_item_image(img, options.image));
      if (!it.video.empty()) {  // the clip's frames, sampled and laid out as data/video.h does for training
        const auto clip = it.video_pick ? data::decode_frame(it.video, it.video_pick)  // one given frame (SEED)
                                        : data::decode_video(it.video, it.video_frames);
        for (const auto& f : clip.frames) images.push_back(preprocess_image(f, options.image));
      }
    }
    const auto answers = greedy_generate(model, prompts, images.empty() ? torch::Tensor() : torch::stack(images), gen);
    std::vector<std::pair<std::string, std::string>> lines;
    for (size_t k = start; k < end; ++k)
      lines.emplace_back(items[todo[k]].id, strip(tokenizer.decode(answers[k - start])));
    eval::append_predictions(cache_file, lines);  // flushed per batch: a killed run resumes from here
    res.generated += static_cast<int64_t>(end - start);
  }
  if (was_training) model->train();

  int64_t generated_total = res.generated;
  if (comm) {
    generated_total = comm->sum(res.generated, "benchmark generated count");
    comm->barrier("benchmark predictions written");
  }
  if (rank != 0) return res;

  const auto preds = eval::merge_prediction_cache(dir, items);
  const auto score = eval::score_bench(def, options.data_dir, items, preds, dir);
  nlohmann::ordered_json m;
  m["bench"] = def.name;
  m["description"] = def.description;
  m["data"] = options.data_dir;
  m["questions"] = res.questions;
  m["generated"] = generated_total;
  m["cached"] = res.questions - generated_total;
  m["decoding"] = {{"max_new_tokens", def.decoding.max_new_tokens},
                   {"min_new_tokens", def.decoding.min_new_tokens}};
  m["headline"] = {{"name", score.headline_name},
                   {"value", score.has_score ? nlohmann::ordered_json(score.headline) : nullptr}};
  if (!score.extra.is_null()) m["aggregate"] = score.extra;
  m["scores"] = score.scores;
  nlohmann::ordered_json files = nlohmann::ordered_json::array();
  for (const auto& f : score.files)
    files.push_back({{"name", f.name}, {"metric", f.metric}, {"refs", f.refs}, {"preds", f.preds}});
  m["files"] = files;
  {
    std::ofstream f(dir + "/metrics.json");
    f << m.dump(2) << "\n";
    if (!f) throw std::runtime_error(dir + "/metrics.json: write failed");
  }
  res.metrics = m;
  res.table = summary_table(def, score, res, generated_total);
  return res;
}

}  // namespace owl2
