// Public-format readers for the caption and VQA scorers, and the metric dispatch of `owl2 score`.
#include "eval/score_files.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>

#include "eval/bench_files.h"
#include "eval/ptb_tokenizer.h"

namespace owl2::eval {
namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::invalid_argument(fmt::format("{}: cannot open file", path));
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", path, e.what()));
  }
}

std::string type_name(const json& j) { return j.type_name(); }

// Typed field access with a message naming file, entry and key.
const json& field(const std::string& path, const std::string& where, const json& obj, const char* key) {
  if (!obj.is_object())
    throw std::invalid_argument(fmt::format("{}: {}: expected an object, found {}", path, where, type_name(obj)));
  const auto it = obj.find(key);
  if (it == obj.end()) throw std::invalid_argument(fmt::format("{}: {}: missing key '{}'", path, where, key));
  return *it;
}

int64_t int_field(const std::string& path, const std::string& where, const json& obj, const char* key) {
  const json& v = field(path, where, obj, key);
  if (!v.is_number_integer())
    throw std::invalid_argument(fmt::format("{}: {}: '{}' must be an integer, found {} {}", path, where, key,
                                            type_name(v), v.dump()));
  return v.get<int64_t>();
}

std::string string_field(const std::string& path, const std::string& where, const json& obj, const char* key) {
  const json& v = field(path, where, obj, key);
  if (!v.is_string())
    throw std::invalid_argument(fmt::format("{}: {}: '{}' must be a string, found {} {}", path, where, key,
                                            type_name(v), v.dump()));
  return v.get<std::string>();
}

const json& array_field(const std::string& path, const json& root, const char* key) {
  const json& v = field(path, "top level", root, key);
  if (!v.is_array())
    throw std::invalid_argument(fmt::format("{}: '{}' must be an array, found {}", path, key, type_name(v)));
  return v;
}

const json& top_array(const std::string& path, const json& root) {
  if (!root.is_array())
    throw std::invalid_argument(
        fmt::format("{}: expected a JSON array of results, found {}", path, type_name(root)));
  return root;
}

// id -> text from a results file, rejecting duplicates.
std::map<int64_t, std::pair<size_t, std::string>> read_results(const std::string& path, const char* id_key,
                                                               const char* text_key) {
  const json root = read_json(path);
  std::map<int64_t, std::pair<size_t, std::string>> out;
  const json& arr = top_array(path, root);
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string where = fmt::format("entry {}", i);
    const int64_t id = int_field(path, where, arr[i], id_key);
    const std::string text = string_field(path, where, arr[i], text_key);
    const auto [it, fresh] = out.emplace(id, std::make_pair(i, text));
    if (!fresh)
      throw std::invalid_argument(
          fmt::format("{}: entry {}: duplicate {} {} (first at entry {})", path, i, id_key, id, it->second.first));
  }
  return out;
}

double round2(double x) { return std::round(x * 100.0) / 100.0; }

}  // namespace

CaptionFiles load_caption_files(const std::string& refs_path, const std::string& preds_path) {
  const json refs = read_json(refs_path);
  const json& anns = array_field(refs_path, refs, "annotations");
  CaptionFiles out;
  std::unordered_map<int64_t, size_t> slot;  // image id -> position
  auto add_image = [&](int64_t id, const std::string& where) {
    if (!slot.emplace(id, out.image_ids.size()).second)
      throw std::invalid_argument(fmt::format("{}: {}: duplicate image id {}", refs_path, where, id));
    out.image_ids.push_back(id);
  };
  const bool has_images = refs.is_object() && refs.contains("images");
  if (has_images) {
    const json& images = array_field(refs_path, refs, "images");
    for (size_t i = 0; i < images.size(); ++i) {
      const std::string where = fmt::format("images[{}]", i);
      add_image(int_field(refs_path, where, images[i], "id"), where);
    }
  }
  out.raw.refs.resize(out.image_ids.size());
  for (size_t i = 0; i < anns.size(); ++i) {
    const std::string where = fmt::format("annotations[{}]", i);
    const int64_t id = int_field(refs_path, where, anns[i], "image_id");
    const std::string caption = string_field(refs_path, where, anns[i], "caption");
    auto it = slot.find(id);
    if (it == slot.end()) {
      if (has_images)
        throw std::invalid_argument(
            fmt::format("{}: {}: image_id {} is not in the 'images' list", refs_path, where, id));
      it = slot.emplace(id, out.image_ids.size()).first;
      out.image_ids.push_back(id);
      out.raw.refs.emplace_back();
    }
    out.raw.refs[it->second].push_back(caption);
  }
  for (size_t k = 0; k < out.image_ids.size(); ++k)
    if (out.raw.refs[k].empty())
      throw std::invalid_argument(
          fmt::format("{}: image {} has no reference caption", refs_path, out.image_ids[k]));

  const auto results = read_results(preds_path, "image_id", "caption");
  out.raw.hyps.assign(out.image_ids.size(), std::string());
  std::vector<bool> seen(out.image_ids.size(), false);
  for (const auto& [id, entry] : results) {
    const auto it = slot.find(id);
    if (it == slot.end())
      throw std::invalid_argument(fmt::format("{}: entry {}: image_id {} is not in {}", preds_path, entry.first, id,
                                              refs_path));
    out.raw.hyps[it->second] = entry.second;
    seen[it->second] = true;
  }
  for (size_t k = 0; k < seen.size(); ++k)
    if (!seen[k])
      throw std::invalid_argument(fmt::format("{}: no caption for image_id {} ({} images in {}, {} results)",
                                              preds_path, out.image_ids[k], out.image_ids.size(), refs_path,
                                              results.size()));
  return out;
}

namespace {

// VizWiz: refs are a list [{image, answers:[{answer, answer_confidence}], ...}], results [{image, answer}];
// questions are keyed by image name and numbered in file order.
VqaFiles load_vizwiz_files(const std::string& refs_path, const json& refs, const std::string& preds_path) {
  VqaFiles out;
  std::unordered_map<std::string, size_t> first;
  for (size_t i = 0; i < refs.size(); ++i) {
    const std::string where = fmt::format("entry {}", i);
    const std::string image = string_field(refs_path, where, refs[i], "image");
    if (const auto [it, fresh] = first.emplace(image, i); !fresh)
      throw std::invalid_argument(
          fmt::format("{}: {}: duplicate image '{}' (first at entry {})", refs_path, where, image, it->second));
    const json& answers = field(refs_path, where, refs[i], "answers");
    if (!answers.is_array() || answers.empty())
      throw std::invalid_argument(fmt::format("{}: {} (image '{}'): 'answers' must be a non-empty array (test "
                                              "files have none: they are scored by the server)",
                                              refs_path, where, image));
    VqaQuestion q;
    q.question_id = static_cast<int64_t>(i);
    for (size_t a = 0; a < answers.size(); ++a) {
      json rest = answers[a];
      const std::string text = string_field(refs_path, fmt::format("{}.answers[{}]", where, a), answers[a], "answer");
      rest.erase("answer");
      q.answers.push_back({text, rest.dump() + "#" + std::to_string(a)});  // records have no answer_id
    }
    if (refs[i].contains("answer_type") && refs[i]["answer_type"].is_string())
      q.answer_type = refs[i]["answer_type"].get<std::string>();
    out.questions.push_back(std::move(q));
  }
  const json res = read_json(preds_path);
  const json& arr = top_array(preds_path, res);
  std::vector<std::string> preds(out.questions.size());
  std::vector<long> seen(out.questions.size(), -1);
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string where = fmt::format("entry {}", i);
    const std::string image = string_field(preds_path, where, arr[i], "image");
    const std::string answer = string_field(preds_path, where, arr[i], "answer");
    const auto it = first.find(image);
    if (it == first.end())
      throw std::invalid_argument(fmt::format("{}: {}: image '{}' is not in {}", preds_path, where, image, refs_path));
    if (seen[it->second] >= 0)
      throw std::invalid_argument(fmt::format("{}: {}: duplicate image '{}' (first at entry {})", preds_path, where,
                                              image, seen[it->second]));
    seen[it->second] = static_cast<long>(i);
    preds[it->second] = answer;
  }
  for (size_t k = 0; k < seen.size(); ++k)
    if (seen[k] < 0)
      throw std::invalid_argument(fmt::format("{}: no answer for image '{}'", preds_path,
                                              refs[k]["image"].get<std::string>()));
  out.predictions = std::move(preds);
  return out;
}

}  // namespace

VqaFiles load_vqa_files(const std::string& refs_path, const std::string& preds_path) {
  const json refs = read_json(refs_path);
  if (refs.is_array()) return load_vizwiz_files(refs_path, refs, preds_path);
  const bool textvqa_format = refs.is_object() && refs.contains("data") && !refs.contains("annotations");
  const json& anns = array_field(refs_path, refs, textvqa_format ? "data" : "annotations");
  VqaFiles out;
  std::unordered_map<int64_t, size_t> first;
  for (size_t i = 0; i < anns.size(); ++i) {
    const std::string where = fmt::format("{}[{}]", textvqa_format ? "data" : "annotations", i);
    VqaQuestion q;
    q.question_id = int_field(refs_path, where, anns[i], "question_id");
    if (const auto [it, fresh] = first.emplace(q.question_id, i); !fresh)
      throw std::invalid_argument(fmt::format("{}: {}: duplicate question_id {} (first at index {})", refs_path, where,
                                              q.question_id, it->second));
    const json& answers = field(refs_path, where, anns[i], "answers");
    if (!answers.is_array() || answers.empty())
      throw std::invalid_argument(fmt::format("{}: {} (question_id {}): 'answers' must be a non-empty array, found {}",
                                              refs_path, where, q.question_id, answers.dump()));
    for (size_t a = 0; a < answers.size(); ++a) {
      const std::string awhere = fmt::format("{}.answers[{}]", where, a);
      if (answers[a].is_string()) {
        q.answers.push_back({answers[a].get<std::string>(), std::to_string(a)});
      } else {
        json rest = answers[a];
        const std::string text = string_field(refs_path, awhere, answers[a], "answer");
        rest.erase("answer");
        q.answers.push_back({text, rest.dump()});
      }
    }
    if (!textvqa_format) {
      if (anns[i].contains("question_type")) q.question_type = string_field(refs_path, where, anns[i], "question_type");
      if (anns[i].contains("answer_type")) q.answer_type = string_field(refs_path, where, anns[i], "answer_type");
    }
    out.questions.push_back(std::move(q));
  }
  const auto results = read_results(preds_path, "question_id", "answer");
  for (const auto& [id, entry] : results)
    if (!first.count(id))
      throw std::invalid_argument(
          fmt::format("{}: entry {}: question_id {} is not in {}", preds_path, entry.first, id, refs_path));
  for (const auto& q : out.questions) {
    const auto it = results.find(q.question_id);
    if (it == results.end())
      throw std::invalid_argument(fmt::format("{}: no answer for question_id {} ({} questions in {}, {} results)",
                                              preds_path, q.question_id, out.questions.size(), refs_path,
                                              results.size()));
    out.predictions.push_back(it->second.second);
  }
  return out;
}

CaptionSet tokenize_captions(const CaptionSet& raw) {
  // Two batches, as COCOEvalCap tokenizes them: all references image by image, then all hypotheses.
  std::vector<std::string> refs_flat;
  for (const auto& refs : raw.refs) refs_flat.insert(refs_flat.end(), refs.begin(), refs.end());
  const auto refs_tok = coco_tokenize_batch(refs_flat);
  CaptionSet tok;
  tok.hyps = coco_tokenize_batch(raw.hyps);
  size_t k = 0;
  for (const auto& refs : raw.refs) {
    tok.refs.emplace_back(refs_tok.begin() + static_cast<long>(k), refs_tok.begin() + static_cast<long>(k + refs.size()));
    k += refs.size();
  }
  return tok;
}

namespace {

using OrderedJson = nlohmann::ordered_json;

// The caption metrics share one reader and tokenization; each row keeps the scores it names.
struct CaptionReport {
  size_t images = 0;
  std::optional<BleuScore> bleu;
  std::optional<double> rouge_l, cider;
};

template <bool kBleu, bool kRouge, bool kCider>
CaptionReport score_captions(const std::string& refs_path, const std::string& preds_path) {
  const CaptionFiles files = load_caption_files(refs_path, preds_path);
  const CaptionSet tok = tokenize_captions(files.raw);
  CaptionReport r;
  r.images = files.image_ids.size();
  if (kBleu) r.bleu = bleu(tok);
  if (kRouge) r.rouge_l = rouge_l(tok).corpus;
  if (kCider) r.cider = cider_d(tok).corpus;
  return r;
}

void caption_json(const CaptionReport& r, OrderedJson& out) {
  out["images"] = r.images;
  if (r.bleu) {
    for (int k = 0; k < 4; ++k) out[fmt::format("Bleu_{}", k + 1)] = r.bleu->corpus[k];
  }
  if (r.rouge_l) out["ROUGE_L"] = *r.rouge_l;
  if (r.cider) out["CIDEr"] = *r.cider;
}

template <VqaVariant kVariant> VqaReport score_vqa(const std::string& refs_path, const std::string& preds_path) {
  const VqaFiles files = load_vqa_files(refs_path, preds_path);
  try {
    return vqa_accuracy(files.questions, files.predictions, kVariant);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{}: {}", refs_path, e.what()));
  }
}

void vqa_json(const VqaReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["accuracy"] = round2(r.overall);  // what the reference prints
  out["accuracy_exact"] = r.overall;
  if (!r.per_answer_type.empty()) {
    OrderedJson t;
    for (const auto& [k, x] : r.per_answer_type) t[k] = round2(x);
    out["per_answer_type"] = t;
  }
  if (!r.per_question_type.empty()) {
    OrderedJson t;
    for (const auto& [k, x] : r.per_question_type) t[k] = round2(x);
    out["per_question_type"] = t;
  }
}

void pope_json(const PopeReport& r, OrderedJson& out) {
  out["questions"] = r.tp + r.fp + r.tn + r.fn;
  out["accuracy"] = r.accuracy;
  out["precision"] = r.precision;
  out["recall"] = r.recall;
  out["f1"] = r.f1;
  out["yes_ratio"] = r.yes_ratio;
  out["tp"] = r.tp;
  out["fp"] = r.fp;
  out["tn"] = r.tn;
  out["fn"] = r.fn;
}

MmeReport score_mme(const std::string& /*refs_path*/, const std::string& results_dir) {
  return score_mme_dir(results_dir);
}

void mme_json(const MmeReport& r, OrderedJson& out) {
  out["perception"] = r.perception;
  out["cognition"] = r.cognition;
  OrderedJson tasks;
  for (const auto& [name, t] : r.tasks)
    tasks[name] = {{"acc", t.acc}, {"acc_plus", t.acc_plus}, {"score", t.score}, {"questions", t.questions}};
  out["tasks"] = tasks;
}

void mmbench_json(const MmbenchReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["hits"] = r.hits;
  out["accuracy"] = r.accuracy;
  out["unresolved"] = r.unresolved;
  out["unresolved_questions"] = r.unresolved_questions;
  out["per_l2_category"] = r.per_l2_category;
  out["per_category"] = r.per_category;
}

void scienceqa_json(const ScienceqaReport& r, OrderedJson& out) {
  out["questions"] = r.total;
  out["accuracy"] = 100.0 * r.accuracy;
  out["img_questions"] = r.img_total;
  out["img_accuracy"] = 100.0 * r.img_accuracy;
}

void gqa_json(const GqaReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["accuracy"] = r.accuracy;
  out["binary"] = r.binary;
  out["open"] = r.open;
}

void video_qa_json(const VideoQaReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["correct"] = r.correct;
  out["accuracy"] = r.accuracy;
}

void seed_json(const SeedReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["missing"] = r.missing;
  out["accuracy"] = r.accuracy;
  out["image"] = r.image;
  out["video"] = r.video;
  out["per_type"] = r.per_type;
}

void qbench_json(const QbenchReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["accuracy"] = r.accuracy;
  out["unresolved"] = r.unresolved;
  out["per_type"] = r.per_type;
  out["per_concern"] = r.per_concern;
}

void mmmu_json(const MmmuReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["accuracy"] = r.accuracy;
  out["unparsed"] = r.unparsed;
  out["per_subject"] = r.per_subject;
}

void mmlu_json(const MmluReport& r, OrderedJson& out) {
  out["questions"] = r.questions;
  out["micro"] = r.micro;
  out["macro"] = r.macro;
  out["per_subject"] = r.per_subject;
}

// One row per metric: its name, whether it reads --refs, and `run`, which reads and scores the files into the
// metric's report (`score`) and writes the report's fields after "metric" (`to_json`).
struct MetricRow {
  std::string name;
  bool needs_refs = true;
  std::function<void(const std::string& refs_path, const std::string& preds_path, OrderedJson& out)> run;
};

template <class Report>
MetricRow row(std::string name, Report (*score)(const std::string&, const std::string&),
              void (*to_json)(const Report&, OrderedJson&), bool needs_refs = true) {
  return {std::move(name), needs_refs,
          [score, to_json](const std::string& refs, const std::string& preds, OrderedJson& out) {
            to_json(score(refs, preds), out);
          }};
}

const std::vector<MetricRow>& metric_table() {
  static const std::vector<MetricRow> rows = {
      row("cider", &score_captions<false, false, true>, &caption_json),
      row("bleu", &score_captions<true, false, false>, &caption_json),
      row("rouge_l", &score_captions<false, true, false>, &caption_json),
      row("captions", &score_captions<true, true, true>, &caption_json),
      row("vqa", &score_vqa<VqaVariant::Owl2>, &vqa_json),
      row("vqa_official", &score_vqa<VqaVariant::Official>, &vqa_json),
      row("textvqa", &score_vqa<VqaVariant::TextVqa>, &vqa_json),
      row("pope", &score_pope_files, &pope_json),
      row("mme", &score_mme, &mme_json, /*needs_refs=*/false),
      row("mmbench", &score_mmbench_files, &mmbench_json),
      row("scienceqa", &score_scienceqa_files, &scienceqa_json),
      row("gqa", &score_gqa_files, &gqa_json),
      row("seed", &score_seed_files, &seed_json),
      row("video_qa", &score_video_qa_files, &video_qa_json),
      row("qbench", &score_qbench_files, &qbench_json),
      row("mmmu", &score_mmmu_files, &mmmu_json),
      row("mmlu", &score_mmlu_files, &mmlu_json),
  };
  return rows;
}

const MetricRow* find_metric(const std::string& metric) {
  for (const auto& r : metric_table()) {
    if (r.name == metric) return &r;
  }
  return nullptr;
}

}  // namespace

const std::vector<std::string>& score_metric_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& r : metric_table()) out.push_back(r.name);
    return out;
  }();
  return names;
}

bool score_metric_needs_refs(const std::string& metric) {
  const MetricRow* row = find_metric(metric);
  return row == nullptr || row->needs_refs;
}

nlohmann::ordered_json score_files(const std::string& metric, const std::string& refs_path,
                                   const std::string& preds_path) {
  const MetricRow* row = find_metric(metric);
  if (row == nullptr) {
    std::string names;
    for (const auto& n : score_metric_names()) names += (names.empty() ? "" : ", ") + n;
    throw std::invalid_argument(fmt::format("unknown metric '{}': expected one of {}", metric, names));
  }
  nlohmann::ordered_json out;
  out["metric"] = metric;
  row->run(refs_path, preds_path, out);
  return out;
}

}  // namespace owl2::eval
