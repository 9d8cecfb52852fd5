// The benchmarks of `owl2 eval --bench`: for each, the reader of its public files, the prompt, the decoding
// settings, the post-processing and the writer of its results files (eval_metrics.md, spec §5.2).
#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "eval/bench_files.h"
#include "eval/bench_io.h"
#include "eval/bench_suite.h"
#include "eval/benchmarks.h"
#include "eval/score_files.h"
#include "eval/vqa_accuracy.h"

namespace owl2::eval {
namespace {

using namespace bench_io;
using ojson = nlohmann::ordered_json;

std::string identity(const std::string& s) { return s; }

std::set<std::string> ids_of(const std::vector<BenchItem>& items, const char* key) {
  std::set<std::string> ids;
  for (const auto& it : items) {
    const json& v = it.meta.at(key);
    ids.insert(v.is_string() ? v.get<std::string>() : v.dump());
  }
  return ids;
}

std::string id_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// `src` if every entry of its array `key` (the whole file when key is empty) is evaluated; otherwise the
// evaluated entries written to `subset`, which is returned. Other top-level fields are kept.
std::string subset_array(const std::string& src, const char* key, const char* id_key, const std::set<std::string>& keep,
                         const std::string& subset) {
  const json root = read_json(src);
  const json& arr = *key ? root.at(key) : root;
  json kept = json::array();
  for (const auto& e : arr)
    if (e.is_object() && e.contains(id_key) && keep.count(id_text(e.at(id_key)))) kept.push_back(e);
  if (kept.size() == arr.size()) return src;
  json out = root;
  (*key ? out[key] : out) = kept;
  write_text(subset, out.dump());
  return subset;
}

ScoredFiles scored(const std::string& name, const std::string& metric, const std::string& refs,
                   const std::string& preds) {
  return {name, metric, refs, preds};
}

// Runs the file scorer on each entry of `files` into score.scores.
void run_scorers(BenchScore& score) {
  for (const auto& f : score.files) score.scores[f.name] = score_files(f.metric, f.refs, f.preds);
}

// One results file scored by `metric`; the headline is one field of its scores, times `scale` (100 where the
// scorer reports a fraction).
BenchScore score_one(const std::string& metric, const std::string& refs, const std::string& preds,
                     const std::string& headline_name, const std::string& field, double scale = 1.0) {
  BenchScore s;
  s.files = {scored(metric, metric, refs, preds)};
  run_scorers(s);
  s.headline_name = headline_name;
  s.headline = scale * s.scores[metric][field].get<double>();
  return s;
}

std::string options_block(const std::vector<std::string>& options) {
  std::string s;
  for (size_t i = 0; i < options.size(); ++i)
    s += fmt::format("{}{}. {}", i ? "\n" : "", static_cast<char>('A' + i), options[i]);
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// VQAv2 / OK-VQA (eval_metrics.md §1.1): questions JSON + annotations JSON + COCO images. Test-dev has no
// annotations: its answers go through the EvalAI processor into the upload file (§1.4).

// The upload file of a server-scored split: every answer through EvalAIAnswerProcessor, as the converters do.
BenchScore write_upload(const std::vector<BenchItem>& items, const std::vector<std::string>& preds, const char* id_key,
                        const std::string& out) {
  json res = json::array();
  for (size_t i = 0; i < items.size(); ++i)
    res.push_back({{id_key, items[i].meta.at(id_key)}, {"answer", evalai_process_answer(preds[i])}});
  const std::string upload = out + "/results_evalai.json";
  write_text(upload, res.dump());
  BenchScore s;
  s.has_score = false;
  s.headline_name = "no annotations: scored by the EvalAI server";
  s.extra = {{"upload", upload}};
  return s;
}

bool any_exists(const std::string& dir, const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (fs::exists(fs::path(dir) / n)) return true;
  return false;
}

std::vector<BenchItem> read_coco_vqa(const std::string& dir, const std::vector<std::string>& question_names) {
  const std::string qfile = find_file(dir, question_names);
  const bool test = fs::path(qfile).filename().string().find("test") != std::string::npos;
  const json root = read_json(qfile);
  const json& qs = need_array(qfile, root, "questions");
  UniqueIds ids(qfile, "question_id");
  std::vector<BenchItem> out;
  for (size_t i = 0; i < qs.size(); ++i) {
    const std::string where = fmt::format("questions[{}]", i);
    const int64_t qid = need_int(qfile, where, qs[i], "question_id");
    const int64_t image_id = need_int(qfile, where, qs[i], "image_id");
    const std::string question = need_str(qfile, where, qs[i], "question");
    ids.add(std::to_string(qid), where);
    BenchItem it;
    it.id = it.group = std::to_string(qid);
    // evaluate_vqa.py: a space, not "\n", before the instruction (spec §5.2).
    it.prompt = owl2_eval_prompt(question + " " + kShortAnswerInstruction, 1);
    const std::string image = test ? fmt::format("test2015/COCO_test2015_{:012d}.jpg", image_id)
                                   : fmt::format("val2014/COCO_val2014_{:012d}.jpg", image_id);
    it.images.push_back({image_path(fs::path(dir) / image), ""});
    it.meta = {{"question_id", qid}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_coco_vqa(const std::string& dir, const std::vector<std::string>& ann_names,
                          const std::vector<BenchItem>& items, const std::vector<std::string>& preds,
                          const std::string& out) {
  if (!any_exists(dir, ann_names)) return write_upload(items, preds, "question_id", out);
  json res = json::array();
  for (size_t i = 0; i < items.size(); ++i)
    res.push_back({{"question_id", items[i].meta.at("question_id")}, {"answer", preds[i]}});
  const std::string results = out + "/results.json";
  write_text(results, res.dump());
  const std::string refs = subset_array(find_file(dir, ann_names), "annotations", "question_id",
                                        ids_of(items, "question_id"), out + "/annotations_subset.json");
  return score_one("vqa", refs, results, "accuracy", "accuracy");
}

const std::vector<std::string> kVqav2Questions = {"v2_OpenEnded_mscoco_val2014_questions.json",
                                                  "v2_OpenEnded_mscoco_test-dev2015_questions.json"};
const std::vector<std::string> kVqav2Annotations = {"v2_mscoco_val2014_annotations.json"};
const std::vector<std::string> kOkvqaQuestions = {"OpenEnded_mscoco_val2014_questions.json"};
const std::vector<std::string> kOkvqaAnnotations = {"mscoco_val2014_annotations.json"};

// ---------------------------------------------------------------------------------------------------------
// VizWiz (§1.1, §1.2): val.json [{image, question, answers}] + val/ images; results [{image, answer}].
// test.json (no answers) + test/ gives the upload file.

const std::vector<std::string> kVizwizFiles = {"val.json", "test.json"};

std::vector<BenchItem> read_vizwiz(const std::string& dir) {
  const std::string file = find_file(dir, kVizwizFiles);
  const std::string split = fs::path(file).stem().string();
  const json root = read_json(file);
  if (!root.is_array()) throw std::invalid_argument(fmt::format("{}: expected a JSON array of questions", file));
  UniqueIds ids(file, "image");
  std::vector<BenchItem> out;
  for (size_t i = 0; i < root.size(); ++i) {
    const std::string where = fmt::format("entry {}", i);
    const std::string image = need_str(file, where, root[i], "image");
    const std::string question = need_str(file, where, root[i], "question");
    ids.add(image, where);
    BenchItem it;
    it.id = it.group = image;
    // LLaVA-1.5's VizWiz prompt (no mPLUG-Owl2 script): the "Unanswerable" line before the instruction.
    it.prompt =
        owl2_eval_prompt(question + "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" +
                             kShortAnswerInstruction,
                         1);
    it.images.push_back({(fs::path(dir) / split / image).string(), ""});
    it.meta = {{"image", image}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_vizwiz(const std::string& dir, const std::vector<BenchItem>& items,
                        const std::vector<std::string>& preds, const std::string& out) {
  if (fs::path(find_file(dir, kVizwizFiles)).filename() == "test.json") return write_upload(items, preds, "image", out);
  json res = json::array();
  for (size_t i = 0; i < items.size(); ++i) res.push_back({{"image", items[i].meta.at("image")}, {"answer", preds[i]}});
  const std::string results = out + "/results.json";
  write_text(results, res.dump());
  const std::string refs =
      subset_array(find_file(dir, {"val.json"}), "", "image", ids_of(items, "image"), out + "/val_subset.json");
  return score_one("vqa", refs, results, "accuracy", "accuracy");
}

// ---------------------------------------------------------------------------------------------------------
// TextVQA (§1.1, §1.2): TextVQA_0.5.1_val.json {data:[...]} + train_images/<image_id>.jpg.

std::vector<BenchItem> read_textvqa(const std::string& dir, bool ocr) {
  const std::string file = find_file(dir, {"TextVQA_0.5.1_val.json"});
  const json root = read_json(file);
  const json& data = need_array(file, root, "data");
  UniqueIds ids(file, "question_id");
  std::vector<BenchItem> out;
  for (size_t i = 0; i < data.size(); ++i) {
    const std::string where = fmt::format("data[{}]", i);
    const int64_t qid = need_int(file, where, data[i], "question_id");
    const std::string image_id = need_str(file, where, data[i], "image_id");
    const std::string question = need_str(file, where, data[i], "question");
    ids.add(std::to_string(qid), where);
    BenchItem it;
    it.id = it.group = std::to_string(qid);
    if (ocr) {
      // LLaVA's llava_textvqa_val_v051_ocr.jsonl: question, the OCR line, the instruction (one per line).
      std::string tokens;
      if (data[i].contains("ocr_tokens")) {
        const json& t = data[i]["ocr_tokens"];
        if (!t.is_array())
          throw std::invalid_argument(fmt::format("{}: {}: 'ocr_tokens' must be an array", file, where));
        for (size_t k = 0; k < t.size(); ++k) {
          if (!t[k].is_string())
            throw std::invalid_argument(
                fmt::format("{}: {}: ocr_tokens[{}] must be a string, found {}", file, where, k, t[k].dump()));
          tokens += (k ? ", " : "") + t[k].get<std::string>();
        }
      }
      std::string body = question + "\n";
      if (!tokens.empty()) body += "Reference OCR token: " + tokens + "\n";
      it.prompt = owl2_eval_prompt(body + kShortAnswerInstruction, 1);
    } else {
      it.prompt = owl2_eval_prompt(question + " " + kShortAnswerInstruction, 1);
    }
    it.images.push_back({image_path(fs::path(dir) / "train_images" / (image_id + ".jpg")), ""});
    it.meta = {{"question_id", qid}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_textvqa(const std::string& dir, bool ocr, const std::vector<BenchItem>& items,
                         const std::vector<std::string>& preds, const std::string& out) {
  json res = json::array();
  for (size_t i = 0; i < items.size(); ++i)
    res.push_back({{"question_id", items[i].meta.at("question_id")}, {"answer", preds[i]}});
  const std::string results = out + "/results.json";
  write_text(results, res.dump());
  const std::string refs = subset_array(find_file(dir, {"TextVQA_0.5.1_val.json"}), "data", "question_id",
                                        ids_of(items, "question_id"), out + "/val_subset.json");
  // mPLUG-Owl2's own textvqa_val goes through VQAEval (A); the 58.2* with OCR tokens is LLaVA's m4c evaluator.
  const std::string metric = ocr ? "textvqa" : "vqa";
  return score_one(metric, refs, results, "accuracy", "accuracy");
}

// ---------------------------------------------------------------------------------------------------------
// GQA (§2.1): testdev_balanced_questions.json {qid: {imageId, question, answer, ...}} + images/<imageId>.jpg.

const std::vector<std::string> kGqaFiles = {"testdev_balanced_questions.json"};

std::vector<BenchItem> read_gqa(const std::string& dir) {
  const std::string file = find_file(dir, kGqaFiles);
  // Parsed keeping the file's order of the questions (json's object would sort the ids).
  ojson root;
  try {
    root = ojson::parse(read_text(file));
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", file, e.what()));
  }
  if (!root.is_object())
    throw std::invalid_argument(fmt::format("{}: expected an object of questions keyed by id", file));
  std::vector<BenchItem> out;
  for (const auto& [qid, oq] : root.items()) {
    const json q = oq;
    const std::string where = "question " + qid;
    const std::string image = need_id(file, where, q, "imageId");
    const std::string question = need_str(file, where, q, "question");
    BenchItem it;
    it.id = it.group = qid;
    it.prompt = owl2_eval_prompt(question + "\n" + kShortAnswerInstruction, 1);
    it.images.push_back({image_path(fs::path(dir) / "images" / (image + ".jpg")), ""});
    it.meta = {{"questionId", qid}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_gqa(const std::string& dir, const std::vector<BenchItem>& items, const std::vector<std::string>& preds,
                     const std::string& out) {
  json res = json::array();
  for (size_t i = 0; i < items.size(); ++i) res.push_back({{"questionId", items[i].id}, {"prediction", preds[i]}});
  const std::string results = out + "/testdev_balanced_predictions.json";
  write_text(results, res.dump());
  const std::string src = find_file(dir, kGqaFiles);
  std::string refs = src;
  const json root = read_json(src);
  if (root.size() != items.size()) {
    json sub = json::object();
    for (const auto& it : items) sub[it.id] = root.at(it.id);
    refs = out + "/questions_subset.json";
    write_text(refs, sub.dump());
  }
  return score_one("gqa", refs, results, "accuracy", "accuracy", 100.0);
}

// ---------------------------------------------------------------------------------------------------------
// ScienceQA-IMG (§2.2): problems.json + pid_splits.json; the test problems with an image,
// images/test/<pid>/<image>.

std::vector<BenchItem> read_scienceqa(const std::string& dir) {
  const std::string pfile = find_file(dir, {"problems.json"});
  const std::string sfile = find_file(dir, {"pid_splits.json"});
  const json problems = read_json(pfile);
  const json splits = read_json(sfile);
  if (!problems.is_object())
    throw std::invalid_argument(fmt::format("{}: expected an object of problems keyed by id", pfile));
  const json& test = need(sfile, "top level", splits, "test");
  if (!test.is_array()) throw std::invalid_argument(fmt::format("{}: 'test' must be an array of problem ids", sfile));
  UniqueIds ids(sfile, "pid");
  std::vector<BenchItem> out;
  for (size_t i = 0; i < test.size(); ++i) {
    const std::string where = fmt::format("test[{}]", i);
    if (!test[i].is_string())
      throw std::invalid_argument(
          fmt::format("{}: {}: a pid must be a string, found {}", sfile, where, test[i].dump()));
    const std::string pid = test[i].get<std::string>();
    ids.add(pid, where);
    if (!problems.contains(pid))
      throw std::invalid_argument(fmt::format("{}: {}: pid {} is not in {}", sfile, where, pid, pfile));
    const json& p = problems[pid];
    const std::string pw = "problem " + pid;
    const json& image = need(pfile, pw, p, "image");
    if (image.is_null()) continue;  // the IMG subset only
    if (!image.is_string())
      throw std::invalid_argument(fmt::format("{}: {}: 'image' must be a string or null", pfile, pw));
    const std::string question = need_str(pfile, pw, p, "question");
    const json& choices = need(pfile, pw, p, "choices");
    if (!choices.is_array() || choices.empty())
      throw std::invalid_argument(fmt::format("{}: {}: 'choices' must be a non-empty array", pfile, pw));
    std::vector<std::string> opts;
    for (const auto& c : choices) {
      if (!c.is_string())
        throw std::invalid_argument(fmt::format("{}: {}: a choice must be a string, found {}", pfile, pw, c.dump()));
      opts.push_back(c.get<std::string>());
    }
    const std::string hint = p.contains("hint") && p["hint"].is_string() ? p["hint"].get<std::string>() : "";
    // LLaVA's CQM-A body with --single-pred-prompt; the context line only when there is a hint.
    std::string body = hint.empty() ? "" : "Context: " + hint + "\n";
    body += question + "\n" + options_block(opts) + "\n" + kOptionInstructionAscii;
    BenchItem it;
    it.id = it.group = pid;
    it.prompt = owl2_eval_prompt(body, 1);
    it.images.push_back({(fs::path(dir) / "images" / "test" / pid / image.get<std::string>()).string(), ""});
    it.meta = {{"question_id", pid}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_scienceqa(const std::string& dir, const std::vector<BenchItem>& items,
                           const std::vector<std::string>& preds, const std::string& out) {
  std::string lines;
  for (size_t i = 0; i < items.size(); ++i)
    lines += json{{"question_id", items[i].id}, {"text", preds[i]}}.dump() + "\n";
  const std::string answers = out + "/answers.jsonl";
  write_text(answers, lines);
  return score_one("scienceqa", find_file(dir, {"problems.json"}), answers, "IMG accuracy", "img_accuracy");
}

// ---------------------------------------------------------------------------------------------------------
// POPE (§2.3): coco_pope_{adversarial,popular,random}.json (JSON lines) + val2014/ images.

const std::vector<std::string> kPopeSplits = {"adversarial", "popular", "random"};

std::string pope_file(const std::string& dir, const std::string& split) {
  return (fs::path(dir) / ("coco_pope_" + split + ".json")).string();
}

std::vector<BenchItem> read_pope(const std::string& dir) {
  std::vector<BenchItem> out;
  for (const auto& split : kPopeSplits) {
    const std::string file = pope_file(dir, split);
    if (!fs::exists(file)) continue;
    UniqueIds ids(file, "question_id");
    const auto lines = lines_of(file);
    for (size_t n = 0; n < lines.size(); ++n) {
      if (lines[n].find_first_not_of(" \t") == std::string::npos) continue;
      const std::string where = fmt::format("line {}", n + 1);
      json r;
      try {
        r = json::parse(lines[n]);
      } catch (const json::parse_error& e) {
        throw std::invalid_argument(fmt::format("{}: {}: invalid JSON: {}", file, where, e.what()));
      }
      const std::string qid = need_id(file, where, r, "question_id");
      const std::string image = need_str(file, where, r, "image");
      const std::string text = need_str(file, where, r, "text");
      need_str(file, where, r, "label");
      ids.add(qid, where);
      BenchItem it;
      it.id = it.group = split + "/" + qid;
      it.prompt = owl2_eval_prompt(text + "\n" + kShortAnswerInstruction, 1);
      it.images.push_back({image_path(fs::path(dir) / "val2014" / image), ""});
      it.meta = {{"split", split}, {"question_id", r.at("question_id")}};
      out.push_back(std::move(it));
    }
  }
  if (out.empty())
    throw std::invalid_argument(
        fmt::format("{}: no POPE question file (coco_pope_adversarial.json, coco_pope_popular.json, "
                    "coco_pope_random.json)",
                    dir));
  return out;
}

BenchScore score_pope(const std::string& dir, const std::vector<BenchItem>& items,
                      const std::vector<std::string>& preds, const std::string& out) {
  BenchScore s;
  for (const auto& split : kPopeSplits) {
    std::string answers, questions;
    std::set<std::string> keep;
    for (size_t i = 0; i < items.size(); ++i)
      if (items[i].meta.at("split") == split) {
        answers += json{{"question_id", items[i].meta.at("question_id")}, {"text", preds[i]}}.dump() + "\n";
        keep.insert(id_text(items[i].meta.at("question_id")));
      }
    if (keep.empty()) continue;
    const std::string answers_path = out + "/answers_" + split + ".jsonl";
    write_text(answers_path, answers);
    std::string refs = pope_file(dir, split);
    size_t total = 0;
    for (const auto& line : lines_of(refs)) {
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      ++total;
      const json r = json::parse(line);
      if (keep.count(id_text(r.at("question_id")))) questions += line + "\n";
    }
    if (total != keep.size()) {
      refs = out + "/coco_pope_" + split + "_subset.json";
      write_text(refs, questions);
    }
    s.files.push_back(scored(split, "pope", refs, answers_path));
  }
  run_scorers(s);
  double f1 = 0, acc = 0;
  for (const auto& f : s.files) {
    f1 += s.scores[f.name]["f1"].get<double>();
    acc += s.scores[f.name]["accuracy"].get<double>();
  }
  const double n = static_cast<double>(s.files.size());
  s.extra = {{"mean_f1", f1 / n}, {"mean_accuracy", acc / n}};
  s.headline_name = "F1 (mean of splits, %)";
  s.headline = 100.0 * f1 / n;
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// MME (§2.4): <task>/ with images/ + questions_answers_YN/, or images and .txt side by side.

std::vector<BenchItem> read_mme(const std::string& dir) {
  std::vector<std::string> tasks = mme_perception_tasks();
  tasks.insert(tasks.end(), mme_cognition_tasks().begin(), mme_cognition_tasks().end());
  std::vector<BenchItem> out;
  for (const auto& task : tasks) {
    const fs::path tdir = fs::path(dir) / task;
    if (!fs::is_directory(tdir)) continue;
    const bool split_dirs = fs::is_directory(tdir / "questions_answers_YN");
    const fs::path qdir = split_dirs ? tdir / "questions_answers_YN" : tdir;
    const fs::path idir = split_dirs ? tdir / "images" : tdir;
    std::vector<fs::path> txts;
    for (const auto& e : fs::directory_iterator(qdir))
      if (e.path().extension() == ".txt") txts.push_back(e.path());
    std::sort(txts.begin(), txts.end());
    for (const auto& txt : txts) {
      std::string image;
      for (const char* ext : {".jpg", ".png", ".jpeg", ".JPG", ".PNG"})
        if (fs::exists(idir / (txt.stem().string() + ext))) {
          image = txt.stem().string() + ext;
          break;
        }
      if (image.empty())
        throw std::invalid_argument(
            fmt::format("{}: no image {}.jpg/.png in {}", txt.string(), txt.stem().string(), idir.string()));
      const auto lines = lines_of(txt.string());
      for (size_t n = 0; n < lines.size(); ++n) {
        if (lines[n].empty()) continue;
        const size_t tab = lines[n].find('\t');
        if (tab == std::string::npos || lines[n].find('\t', tab + 1) != std::string::npos)
          throw std::invalid_argument(fmt::format("{}: line {}: expected 'question<TAB>Yes|No'", txt.string(), n + 1));
        const std::string question = lines[n].substr(0, tab), gt = lines[n].substr(tab + 1);
        if (gt != "Yes" && gt != "No" && gt != "yes" && gt != "no")
          throw std::invalid_argument(fmt::format("{}: line {}: answer '{}' is not Yes/No", txt.string(), n + 1, gt));
        BenchItem it;
        it.id = fmt::format("{}/{}/{}", task, image, n + 1);
        it.group = task + "/" + image;
        // evaluate_mme.py removes "Please answer yes or no." from the formatted prompt (a space stays).
        it.prompt =
            replace_all(owl2_eval_prompt(question + "\n" + kShortAnswerInstruction, 1), "Please answer yes or no.", "");
        it.images.push_back({(idir / image).string(), ""});
        it.meta = {{"task", task}, {"image", image}, {"question", question}, {"gt", gt}};
        out.push_back(std::move(it));
      }
    }
  }
  if (out.empty())
    throw std::invalid_argument(
        fmt::format("{}: no MME task folders (existence/, count/, ..., OCR/, code_reasoning/)", dir));
  return out;
}

// The eval_tool line format has no quoting: tabs and newlines of an answer become spaces.
std::string one_line(const std::string& s) {
  std::string o = s;
  for (char& c : o)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return o;
}

BenchScore score_mme(const std::string&, const std::vector<BenchItem>& items, const std::vector<std::string>& preds,
                     const std::string& out) {
  std::map<std::string, std::string> files;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& m = items[i].meta;
    files[m.at("task").get<std::string>()] +=
        fmt::format("{}\t{}\t{}\t{}\n", m.at("image").get<std::string>(), m.at("question").get<std::string>(),
                    m.at("gt").get<std::string>(), one_line(preds[i]));
  }
  const std::string rdir = out + "/results";
  fs::remove_all(rdir);
  for (const auto& [task, text] : files) write_text(rdir + "/" + task + ".txt", text);
  return score_one("mme", "", rdir, "perception", "perception");
}

// ---------------------------------------------------------------------------------------------------------
// MMBench (§2.5): one TSV with base64 images; circular copies as rows.

std::string find_mmbench_tsv(const std::string& dir) {
  if (fs::exists(fs::path(dir) / "mmbench_dev_20230712.tsv"))
    return (fs::path(dir) / "mmbench_dev_20230712.tsv").string();
  std::vector<std::string> tsvs;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".tsv") tsvs.push_back(e.path().string());
  if (tsvs.size() != 1)
    throw std::invalid_argument(
        fmt::format("{}: expected mmbench_dev_20230712.tsv or exactly one .tsv file, found {}", dir, tsvs.size()));
  return tsvs[0];
}

std::vector<MmbenchTsvRow> read_mmbench_rows(const std::string& file) {
  const TsvFile tsv = read_tsv(file);
  auto col = [&](const char* name, bool required) -> long {
    const auto it = std::find(tsv.header.begin(), tsv.header.end(), name);
    if (it == tsv.header.end()) {
      if (required) throw std::invalid_argument(fmt::format("{}: header has no column '{}'", file, name));
      return -1;
    }
    return it - tsv.header.begin();
  };
  const long c_index = col("index", true), c_question = col("question", true), c_answer = col("answer", false);
  const long c_image = col("image", false), c_hint = col("hint", false), c_cat = col("category", false);
  const long c_l2 = col("l2-category", false), c_split = col("split", false);
  std::vector<MmbenchTsvRow> rows;
  std::set<int64_t> seen;
  for (const auto& [line, f] : tsv.rows) {
    if (f.size() != tsv.header.size())
      throw std::invalid_argument(
          fmt::format("{}: row {}: {} fields, the header has {}", file, line, f.size(), tsv.header.size()));
    MmbenchTsvRow r;
    try {
      size_t used = 0;
      r.index = std::stoll(f[c_index], &used);
      if (used != f[c_index].size()) throw std::invalid_argument("trailing text");
    } catch (const std::exception&) {
      throw std::invalid_argument(fmt::format("{}: row {}: index '{}' is not an integer", file, line, f[c_index]));
    }
    if (!seen.insert(r.index).second)
      throw std::invalid_argument(fmt::format("{}: row {}: duplicate index {}", file, line, r.index));
    r.question = f[c_question];
    // The test split has no answer column: its predictions go to the evaluation server.
    r.answer = c_answer >= 0 ? f[c_answer] : "";
    if (c_answer >= 0 && (r.answer.size() != 1 || r.answer[0] < 'A' || r.answer[0] > 'E'))
      throw std::invalid_argument(
          fmt::format("{}: row {} (index {}): answer '{}' is not a letter A-E", file, line, r.index, r.answer));
    auto opt = [&](long c) { return c >= 0 && f[c] != "nan" ? f[c] : std::string(); };
    r.hint = opt(c_hint);
    r.category = opt(c_cat);
    r.l2_category = opt(c_l2);
    r.split = opt(c_split);
    for (char L : std::string("ABCDE"))
      if (const long c = col(std::string(1, L).c_str(), false); c >= 0 && !opt(c).empty()) r.options[L] = f[c];
    if (c_answer >= 0 && !r.options.count(r.answer[0]))
      throw std::invalid_argument(
          fmt::format("{}: row {} (index {}): answer {} has no option text", file, line, r.index, r.answer));
    if (c_image >= 0) r.image_b64 = f[c_image];
    rows.push_back(std::move(r));
  }
  return rows;
}

std::string tsv_field(const std::string& s) {
  if (s.find_first_of("\t\n\r\"") == std::string::npos) return s;
  return "\"" + replace_all(s, "\"", "\"\"") + "\"";
}

std::vector<BenchItem> read_mmbench(const std::string& dir) {
  const std::string file = find_mmbench_tsv(dir);
  const auto rows = mmbench_expand_circular(read_mmbench_rows(file));
  // Copies without their own image use their main row's image.
  std::map<int64_t, std::string> main_image;
  for (const auto& r : rows)
    if (r.index < 1000000 && !r.image_b64.empty()) main_image[r.index] = r.image_b64;
  std::vector<BenchItem> out;
  for (const auto& r : rows) {
    BenchItem it;
    it.id = std::to_string(r.index);
    it.group = std::to_string(r.index % 1000000);
    it.prompt = owl2_eval_prompt(mmbench_prompt_body(r), 1);
    std::string b64 = r.image_b64;
    if (b64.empty() && main_image.count(r.index % 1000000)) b64 = main_image[r.index % 1000000];
    const std::string where = fmt::format("{}: index {}: image", file, r.index);
    if (b64.empty()) throw std::invalid_argument(where + ": empty");
    it.images.push_back({where, base64_decode(b64, where)});
    ojson row = {{"index", r.index},       {"question", r.question},       {"hint", r.hint},  {"answer", r.answer},
                 {"category", r.category}, {"l2-category", r.l2_category}, {"split", r.split}};
    ojson opts = ojson::object();
    for (const auto& [L, t] : r.options) opts[std::string(1, L)] = t;
    row["options"] = opts;
    it.meta = row;
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_mmbench(const std::string&, const std::vector<BenchItem>& items, const std::vector<std::string>& preds,
                         const std::string& out) {
  if (!items.empty() && items[0].meta.at("answer").get<std::string>().empty()) {
    // No answers (the test split): the submission the server scores, as the reference's xlsx but tab-separated.
    std::string tsv = "index\tquestion\thint\tA\tB\tC\tD\tE\tprediction\tcategory\tl2-category\tsplit\n";
    for (size_t i = 0; i < items.size(); ++i) {
      const auto& m = items[i].meta;
      tsv += std::to_string(m.at("index").get<int64_t>());
      for (const char* k : {"question", "hint"}) tsv += "\t" + tsv_field(m.at(k).get<std::string>());
      for (const char* L : {"A", "B", "C", "D", "E"})
        tsv += "\t" + tsv_field(m.at("options").contains(L) ? m.at("options").at(L).get<std::string>() : "");
      tsv += "\t" + tsv_field(preds[i]);
      for (const char* k : {"category", "l2-category", "split"}) tsv += "\t" + tsv_field(m.at(k).get<std::string>());
      tsv += "\n";
    }
    BenchScore s;
    s.has_score = false;
    s.headline_name = "no answers: scored by the MMBench server";
    s.extra = {{"submission", out + "/submission.tsv"}};
    write_text(out + "/submission.tsv", tsv);
    return s;
  }
  // The evaluated rows (added copies included, images left out) as the refs of `owl2 score --metric mmbench`.
  std::string tsv = "index\tquestion\thint\tA\tB\tC\tD\tE\tanswer\tcategory\tl2-category\tsplit\n";
  std::string lines;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& m = items[i].meta;
    tsv += std::to_string(m.at("index").get<int64_t>());
    for (const char* k : {"question", "hint"}) tsv += "\t" + tsv_field(m.at(k).get<std::string>());
    for (const char* L : {"A", "B", "C", "D", "E"})
      tsv += "\t" + tsv_field(m.at("options").contains(L) ? m.at("options").at(L).get<std::string>() : "");
    for (const char* k : {"answer", "category", "l2-category", "split"})
      tsv += "\t" + tsv_field(m.at(k).get<std::string>());
    tsv += "\n";
    lines += json{{"index", m.at("index")}, {"prediction", preds[i]}}.dump() + "\n";
  }
  const std::string refs = out + "/mmbench_circular.tsv", predictions = out + "/predictions.jsonl";
  write_text(refs, tsv);
  write_text(predictions, lines);
  return score_one("mmbench", refs, predictions, "circular accuracy (%)", "accuracy", 100.0);
}

// ---------------------------------------------------------------------------------------------------------
// SEED-Bench (§2.6), image questions: SEED-Bench.json + SEED-Bench-image/<data_id>.

// A SEED-Bench video question's image: the middle frame (spec §2.6), found as
//  1. SEED-Bench-video-image/<type>_<question_id>.png, the frame LLaVA's extraction script writes;
//  2. SEED-Bench-video-image/[v1_video/]task<type>/<ssv2|kitchen|breakfast>_8_frame/<question_id>/4.png, the fifth
//     of the 8 frames the official release extracted per question;
//  3. the source clip under videos/ (20bn-something-something-v2/, EPIC-KITCHENS/ by the data_id's file name,
//     BreakfastII_15fps_qvga_sync/), decoded at the frame LLaVA's extraction script takes: the middle of the clip
//     (type 10), of the `segment` in seconds (type 11) or in frames (type 12).
// Returns false when none is there (the question is left out; scoring counts it as missing).
bool seed_video_frame(const std::string& dir, const std::string& file, const std::string& where, const json& q,
                      BenchItem& it) {
  const int64_t type = need_int(file, where, q, "question_type_id");
  const std::string qid = need_id(file, where, q, "question_id");
  const fs::path frames = fs::path(dir) / "SEED-Bench-video-image";
  const fs::path llava = frames / fmt::format("{}_{}.png", type, qid);
  if (fs::is_regular_file(llava)) {
    it.images.push_back({llava.string(), ""});
    return true;
  }
  const std::map<int64_t, std::pair<const char*, const char*>> kinds = {
      {10, {"ssv2", "20bn-something-something-v2"}},
      {11, {"kitchen", "EPIC-KITCHENS"}},
      {12, {"breakfast", "BreakfastII_15fps_qvga_sync"}}};
  const auto kind = kinds.find(type);
  if (kind == kinds.end()) return false;
  for (const fs::path base : {frames, frames / "v1_video"}) {
    const fs::path eight =
        base / fmt::format("task{}", type) / fmt::format("{}_8_frame", kind->second.first) / qid / "4.png";
    if (fs::is_regular_file(eight)) {
      it.images.push_back({eight.string(), ""});
      return true;
    }
  }
  std::string data_id = need_str(file, where, q, "data_id");
  if (type == 11) data_id = fs::path(data_id).filename().string();
  const fs::path clip = fs::path(dir) / "videos" / kind->second.second / data_id;
  if (!fs::is_regular_file(clip)) return false;
  // The middle of n frames as the script's get_index(n, 1) takes it: int((n - 1) / 2); none for n < 1.
  const auto middle = [clip = clip.string()](int64_t n) {
    if (n < 1) throw std::runtime_error(fmt::format("video {}: the SEED segment holds no frame", clip));
    return (n - 1) / 2;
  };
  double start = 0, end = 0;
  if (type != 10) {
    const json& seg = need(file, where, q, "segment");
    if (!seg.is_array() || seg.size() != 2 || !seg[0].is_number() || !seg[1].is_number())
      throw std::invalid_argument(
          fmt::format("{}: {}: 'segment' must be [start, end] numbers, found {}", file, where, seg.dump()));
    start = seg[0].get<double>();
    end = seg[1].get<double>();
  }
  it.video = clip.string();
  it.video_frames = 1;
  if (type == 10) {
    it.video_pick = [middle](int64_t total, double) { return middle(total - 1); };
  } else if (type == 11) {  // seconds, through the clip's frame rate, each end clamped into the clip
    it.video_pick = [middle, start, end](int64_t total, double fps) {
      const auto frame = [&](double t) {
        return static_cast<int64_t>(std::min(std::max(t * fps, 0.0), static_cast<double>(total - 1)));
      };
      const int64_t a = frame(start), b = frame(end);
      return a + middle(b - a);
    };
  } else {  // frames, the end clamped to the clip
    it.video_pick = [middle, start, end](int64_t total, double) {
      const auto a = static_cast<int64_t>(start), b = std::min(static_cast<int64_t>(end), total);
      return a + middle(b - a);
    };
  }
  return true;
}

std::vector<BenchItem> read_seed(const std::string& dir) {
  const std::string file = find_file(dir, {"SEED-Bench.json"});
  const json root = read_json(file);
  const json& qs = need_array(file, root, "questions");
  UniqueIds ids(file, "question_id");
  std::vector<BenchItem> out;
  for (size_t i = 0; i < qs.size(); ++i) {
    const std::string where = fmt::format("questions[{}]", i);
    const std::string qid = need_id(file, where, qs[i], "question_id");
    ids.add(qid, where);
    const bool video = qs[i].value("data_type", "image") == "video";
    std::vector<std::string> opts;
    for (const char* k : {"choice_a", "choice_b", "choice_c", "choice_d"})
      opts.push_back(need_str(file, where, qs[i], k));
    BenchItem it;
    if (video && !seed_video_frame(dir, file, where, qs[i], it)) continue;  // no frame or clip for it here
    it.id = it.group = qid;
    // The MMBench-style multiple-choice prompt the maintainer says SEED was run with (spec §5.2, issue #185).
    it.prompt = owl2_eval_prompt(
        need_str(file, where, qs[i], "question") + "\n" + options_block(opts) + "\n" + kOptionInstruction, 1);
    if (!video)
      it.images.push_back({(fs::path(dir) / "SEED-Bench-image" / need_str(file, where, qs[i], "data_id")).string(), ""});
    it.meta = {{"question_id", qs[i].at("question_id")}, {"video", video}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_seed(const std::string& dir, const std::vector<BenchItem>& items,
                      const std::vector<std::string>& preds, const std::string& out) {
  std::string lines;
  for (size_t i = 0; i < items.size(); ++i)
    lines += json{{"question_id", items[i].meta.at("question_id")}, {"prediction", preds[i]}}.dump() + "\n";
  const std::string predictions = out + "/predictions.jsonl";
  write_text(predictions, lines);
  // With video questions answered, the paper's number is the total over both kinds (spec §2.6).
  bool videos = false;
  for (const auto& it : items) videos = videos || it.meta.value("video", false);
  if (videos) return score_one("seed", find_file(dir, {"SEED-Bench.json"}), predictions, "accuracy (%)", "accuracy", 100.0);
  return score_one("seed", find_file(dir, {"SEED-Bench.json"}), predictions, "image accuracy (%)", "image", 100.0);
}

// ---------------------------------------------------------------------------------------------------------
// Q-Bench (§2.8): llvisionqa_dev.json + images/<img_path>.

const std::vector<std::string> kQbenchFiles = {"llvisionqa_dev.json", "llvisionqa_test.json"};

std::vector<BenchItem> read_qbench(const std::string& dir) {
  const std::string file = find_file(dir, kQbenchFiles);
  const json root = read_json(file);
  if (!root.is_array()) throw std::invalid_argument(fmt::format("{}: expected a JSON array of questions", file));
  std::vector<BenchItem> out;
  for (size_t i = 0; i < root.size(); ++i) {
    const std::string where = fmt::format("entry {}", i);
    const json& cands = need(file, where, root[i], "candidates");
    if (!cands.is_array() || cands.empty())
      throw std::invalid_argument(fmt::format("{}: {}: 'candidates' must be a non-empty array", file, where));
    std::vector<std::string> opts;
    for (const auto& c : cands) {
      if (!c.is_string())
        throw std::invalid_argument(
            fmt::format("{}: {}: a candidate must be a string, found {}", file, where, c.dump()));
      opts.push_back(c.get<std::string>());
    }
    need_str(file, where, root[i], "correct_ans");
    BenchItem it;
    it.id = it.group = std::to_string(i);
    it.prompt = owl2_eval_prompt(
        need_str(file, where, root[i], "question") + "\n" + options_block(opts) + "\n" + kOptionInstruction, 1);
    it.images.push_back({(fs::path(dir) / "images" / need_str(file, where, root[i], "img_path")).string(), ""});
    it.meta = {{"id", static_cast<int64_t>(i)}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_qbench(const std::string& dir, const std::vector<BenchItem>& items,
                        const std::vector<std::string>& preds, const std::string& out) {
  std::string lines;
  for (size_t i = 0; i < items.size(); ++i)
    lines += json{{"id", items[i].meta.at("id")}, {"prediction", preds[i]}}.dump() + "\n";
  const std::string predictions = out + "/predictions.jsonl";
  write_text(predictions, lines);
  return score_one("qbench", find_file(dir, kQbenchFiles), predictions, "accuracy (%)", "accuracy", 100.0);
}

// ---------------------------------------------------------------------------------------------------------
// MMMU (spec §5.2): MMMU_validation.jsonl (an export of the dataset, docs/eval.md) with image files.

// A Python list literal of strings ("['a', \"b\"]"), as the dataset stores options; false if it is not one.
bool parse_py_list(const std::string& s, std::vector<std::string>& out) {
  out.clear();
  size_t i = 0;
  auto ws = [&] {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t')) ++i;
  };
  ws();
  if (i >= s.size() || s[i] != '[') return false;
  ++i;
  ws();
  if (i < s.size() && s[i] == ']') return true;
  while (i < s.size()) {
    ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) return false;
    const char q = s[i++];
    std::string item;
    while (i < s.size() && s[i] != q) {
      if (s[i] == '\\' && i + 1 < s.size()) {
        const char e = s[++i];
        item += e == 'n' ? '\n' : e == 't' ? '\t' : e;
      } else {
        item += s[i];
      }
      ++i;
    }
    if (i >= s.size()) return false;
    ++i;
    out.push_back(item);
    ws();
    if (i < s.size() && s[i] == ',') {
      ++i;
      ws();
      if (i < s.size() && s[i] == ']') return true;
      continue;
    }
    if (i < s.size() && s[i] == ']') return true;
    return false;
  }
  return false;
}

}  // namespace

// Shared with bench_files.cpp's MMMU scorer: the options of a record as a list.
std::vector<std::string> mmmu_options(const std::string& file, const std::string& where, const nlohmann::json& rec);

std::vector<std::string> mmmu_options(const std::string& file, const std::string& where, const nlohmann::json& rec) {
  if (!rec.contains("options")) return {};
  const json& o = rec["options"];
  std::vector<std::string> out;
  if (o.is_array()) {
    for (const auto& x : o) {
      if (!x.is_string())
        throw std::invalid_argument(fmt::format("{}: {}: an option must be a string, found {}", file, where, x.dump()));
      out.push_back(x.get<std::string>());
    }
    return out;
  }
  if (o.is_string() && parse_py_list(o.get<std::string>(), out)) return out;
  throw std::invalid_argument(
      fmt::format("{}: {}: 'options' must be a list of strings (or its Python text), found {}", file, where, o.dump()));
}

namespace {

std::vector<BenchItem> read_mmmu(const std::string& dir) {
  const std::string file = find_file(dir, {"MMMU_validation.jsonl", "MMMU_dev.jsonl"});
  const auto lines = lines_of(file);
  UniqueIds ids(file, "id");
  std::vector<BenchItem> out;
  for (size_t n = 0; n < lines.size(); ++n) {
    if (lines[n].find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = fmt::format("line {}", n + 1);
    json r;
    try {
      r = json::parse(lines[n]);
    } catch (const json::parse_error& e) {
      throw std::invalid_argument(fmt::format("{}: {}: invalid JSON: {}", file, where, e.what()));
    }
    const std::string id = need_str(file, where, r, "id");
    ids.add(id, where);
    const std::string type = need_str(file, where, r, "question_type");
    if (type != "multiple-choice" && type != "open")
      throw std::invalid_argument(
          fmt::format("{}: {}: question_type '{}' is not multiple-choice/open", file, where, type));
    std::string body = need_str(file, where, r, "question");
    const auto opts = mmmu_options(file, where, r);
    if (type == "multiple-choice")
      body += "\n" + options_block(opts) + "\n" + kOptionInstruction;
    else
      body += "\n" + std::string(kShortAnswerInstruction);
    // evaluate_mmmu.py: every "<image k>" becomes "<|image|>"; images in the order of their markers.
    BenchItem it;
    it.id = it.group = id;
    std::string prompt;
    size_t pos = 0;
    while (true) {
      const size_t m = body.find("<image ", pos);
      const size_t close = m == std::string::npos ? m : body.find('>', m);
      if (m == std::string::npos || close == std::string::npos) {
        prompt += body.substr(pos);
        break;
      }
      const std::string key = "image_" + body.substr(m + 7, close - m - 7);
      prompt += body.substr(pos, m - pos) + "<|image|>";
      const std::string img = need_str(file, where, r, key.c_str());
      it.images.push_back({(fs::path(dir) / img).string(), ""});
      pos = close + 1;
    }
    it.prompt = "USER: " + prompt + " ASSISTANT: ";
    it.meta = {{"id", id}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_mmmu(const std::string& dir, const std::vector<BenchItem>& items,
                      const std::vector<std::string>& preds, const std::string& out) {
  std::string lines;
  for (size_t i = 0; i < items.size(); ++i) lines += json{{"id", items[i].id}, {"prediction", preds[i]}}.dump() + "\n";
  const std::string predictions = out + "/predictions.jsonl";
  write_text(predictions, lines);
  return score_one("mmmu", find_file(dir, {"MMMU_validation.jsonl", "MMMU_dev.jsonl"}), predictions, "accuracy (%)",
                   "accuracy", 100.0);
}

// ---------------------------------------------------------------------------------------------------------
// COCO / Flickr30K captions (§3.1): a COCO-format annotation file whose images name their files.

std::vector<BenchItem> read_captions(const std::string& dir, const std::vector<std::string>& names) {
  const std::string file = find_file(dir, names);
  const json root = read_json(file);
  const json& images = need_array(file, root, "images");
  UniqueIds ids(file, "image id");
  std::vector<BenchItem> out;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string where = fmt::format("images[{}]", i);
    const int64_t id = need_int(file, where, images[i], "id");
    ids.add(std::to_string(id), where);
    const char* key = images[i].contains("image") ? "image" : "file_name";
    BenchItem it;
    it.id = it.group = std::to_string(id);
    it.prompt = owl2_eval_prompt(kCaptionInstruction, 1);
    it.images.push_back({(fs::path(dir) / need_str(file, where, images[i], key)).string(), ""});
    it.meta = {{"image_id", id}};
    out.push_back(std::move(it));
  }
  return out;
}

BenchScore score_captions(const std::string& dir, const std::vector<std::string>& names,
                          const std::vector<BenchItem>& items, const std::vector<std::string>& preds,
                          const std::string& out) {
  json res = json::array();
  for (size_t i = 0; i < items.size(); ++i)
    res.push_back({{"image_id", items[i].meta.at("image_id")}, {"caption", preds[i]}});
  const std::string results = out + "/results.json";
  write_text(results, res.dump());
  const std::string src = find_file(dir, names);
  std::string refs = src;
  json root = read_json(src);
  const auto keep = ids_of(items, "image_id");
  if (root.at("images").size() != keep.size()) {
    json imgs = json::array(), anns = json::array();
    for (const auto& e : root["images"])
      if (keep.count(id_text(e.at("id")))) imgs.push_back(e);
    for (const auto& e : root.at("annotations"))
      if (keep.count(id_text(e.at("image_id")))) anns.push_back(e);
    root["images"] = imgs;
    root["annotations"] = anns;
    refs = out + "/annotations_subset.json";
    write_text(refs, root.dump());
  }
  return score_one("captions", refs, results, "CIDEr x100", "CIDEr", 100.0);
}

const std::vector<std::string> kCocoCaptionFiles = {"coco_karpathy_test.json", "captions_karpathy_test.json"};
const std::vector<std::string> kFlickrCaptionFiles = {"flickr30k_karpathy_test.json"};

// ---------------------------------------------------------------------------------------------------------
// MMLU-style text multiple choice (§4): the Hendrycks layout dev/<subject>_dev.csv, test/<subject>_test.csv.

std::vector<std::pair<std::string, std::string>> csv_files(const fs::path& dir, const std::string& suffix) {
  std::vector<std::pair<std::string, std::string>> out;  // subject, path
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.emplace_back(name.substr(0, name.size() - suffix.size()), e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string mmlu_example(const std::string& file, size_t row, const std::vector<std::string>& f, bool with_answer) {
  if (f.size() != 6)
    throw std::invalid_argument(
        fmt::format("{}: row {}: expected 6 fields (question, A, B, C, D, answer), found {}", file, row, f.size()));
  std::string s = f[0];
  for (int k = 0; k < 4; ++k) s += fmt::format("\n{}. {}", static_cast<char>('A' + k), f[1 + k]);
  s += "\nAnswer:";
  if (with_answer) s += " " + f[5] + "\n\n";
  return s;
}

std::vector<BenchItem> read_mmlu(const std::string& dir) {
  const auto tests = csv_files(fs::path(dir) / "test", "_test.csv");
  if (tests.empty()) throw std::invalid_argument(fmt::format("{}: no test/<subject>_test.csv files", dir));
  std::vector<BenchItem> out;
  for (const auto& [subject, tpath] : tests) {
    // The 5-shot header of the original MMLU evaluation (the first five dev rows).
    std::string head =
        "The following are multiple choice questions (with answers) about " + replace_all(subject, "_", " ") + ".\n\n";
    const fs::path dev = fs::path(dir) / "dev" / (subject + "_dev.csv");
    if (fs::exists(dev)) {
      const auto rows = read_csv(dev.string());
      for (size_t r = 0; r < rows.size() && r < 5; ++r) head += mmlu_example(dev.string(), r + 1, rows[r], true);
    }
    const auto rows = read_csv(tpath);
    for (size_t r = 0; r < rows.size(); ++r) {
      BenchItem it;
      it.id = it.group = fmt::format("{}/{}", subject, r);
      it.prompt = head + mmlu_example(tpath, r + 1, rows[r], false);
      it.meta = {{"question_id", it.id}};
      out.push_back(std::move(it));
    }
  }
  return out;
}

BenchScore score_mmlu(const std::string& dir, const std::vector<BenchItem>& items,
                      const std::vector<std::string>& preds, const std::string& out) {
  std::string lines;
  for (size_t i = 0; i < items.size(); ++i)
    lines += json{{"question_id", items[i].id}, {"prediction", preds[i]}}.dump() + "\n";
  const std::string predictions = out + "/predictions.jsonl";
  write_text(predictions, lines);
  return score_one("mmlu", dir, predictions, "accuracy (%, micro)", "micro", 100.0);
}

std::string gqa_post(const std::string& s) { return gqa_postprocess(s); }

// ---------------------------------------------------------------------------------------------------------
// Zero-shot video QA (paper Table 6): each clip's kVideoBenchFrames frames are the images, all before the
// question, with the short-answer prompt of the image VQA benchmarks; exact match (video_qa).
// MSRVTT-QA / MSVD-QA: a JSON array (or JSON lines) of {question, answer, video | video_id, question_id | id};
// the clip is videos/<video>, or videos/<video_id>, video<video_id> or vid<video_id> with .mp4, .avi, .webm,
// .mkv or .gif. TGIF-QA FrameQA: the TSV Test_frameqa_question.tsv (gif_name, question, answer, ...) and
// gifs/<gif_name>.gif.

std::string find_clip(const std::string& dir, const std::string& file, const std::string& where, const std::string& name,
                      bool is_id) {
  const fs::path videos = fs::path(dir) / "videos";
  std::vector<fs::path> tried;
  if (!is_id) {
    tried = {videos / name, fs::path(dir) / name};
  } else {
    for (const std::string stem : {name, "video" + name, "vid" + name})
      for (const char* ext : {".mp4", ".avi", ".webm", ".mkv", ".gif"}) tried.push_back(videos / (stem + ext));
  }
  for (const auto& p : tried)
    if (fs::exists(p)) return p.string();
  throw std::invalid_argument(fmt::format("{}: {}: no clip for '{}' (looked for {}{})", file, where, name,
                                          tried.front().string(), tried.size() > 1 ? " and similar names" : ""));
}

BenchItem video_item(const std::string& qid, const std::string& clip, const std::string& question,
                     const std::string& answer) {
  BenchItem it;
  it.id = it.group = qid;
  it.prompt = owl2_eval_prompt(question + "\n" + kShortAnswerInstruction, static_cast<size_t>(kVideoBenchFrames));
  it.video = clip;
  it.video_frames = kVideoBenchFrames;
  it.meta = {{"question_id", qid}, {"answer", answer}, {"video", clip}};
  return it;
}

std::vector<BenchItem> read_video_json_qa(const std::string& dir, const std::vector<std::string>& files) {
  const std::string file = find_file(dir, files);
  std::vector<json> entries;
  const std::string text = read_text(file);
  const auto first = text.find_first_not_of(" \t\r\n");
  try {
    if (first != std::string::npos && text[first] == '[') {
      for (const auto& e : json::parse(text)) entries.push_back(e);
    } else {
      std::istringstream lines(text);
      for (std::string line; std::getline(lines, line);)
        if (line.find_first_not_of(" \t\r") != std::string::npos) entries.push_back(json::parse(line));
    }
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", file, e.what()));
  }
  std::vector<BenchItem> out;
  std::set<std::string> ids;
  for (size_t i = 0; i < entries.size(); ++i) {
    const json& q = entries[i];
    const std::string where = fmt::format("entry {}", i);
    const std::string qid = q.is_object() && q.contains("question_id") ? need_id(file, where, q, "question_id")
                            : q.is_object() && q.contains("id")        ? need_id(file, where, q, "id")
                                                                       : std::to_string(i);
    if (!ids.insert(qid).second) throw std::invalid_argument(fmt::format("{}: {}: question id {} twice", file, where, qid));
    const bool by_name = q.is_object() && q.contains("video");
    const std::string clip = find_clip(dir, file, where, by_name ? need_str(file, where, q, "video")
                                                                 : need_id(file, where, q, "video_id"), !by_name);
    out.push_back(video_item(qid, clip, need_str(file, where, q, "question"), need_str(file, where, q, "answer")));
  }
  return out;
}

std::vector<BenchItem> read_tgif_frameqa(const std::string& dir) {
  const std::string file = find_file(dir, {"Test_frameqa_question.tsv", "test_frameqa_question.tsv"});
  const TsvFile tsv = read_tsv(file);
  auto column = [&](const char* name) {
    const auto it = std::find(tsv.header.begin(), tsv.header.end(), name);
    if (it == tsv.header.end()) throw std::invalid_argument(fmt::format("{}: no '{}' column in the header", file, name));
    return static_cast<size_t>(it - tsv.header.begin());
  };
  const size_t gif = column("gif_name"), question = column("question"), answer = column("answer");
  std::vector<BenchItem> out;
  for (const auto& [line, row] : tsv.rows) {
    const std::string where = fmt::format("line {}", line);
    if (row.size() <= std::max({gif, question, answer}))
      throw std::invalid_argument(fmt::format("{}: {}: {} columns, the header has {}", file, where, row.size(), tsv.header.size()));
    const fs::path clip = fs::path(dir) / "gifs" / (row[gif] + ".gif");
    if (!fs::exists(clip)) throw std::invalid_argument(fmt::format("{}: {}: no clip {}", file, where, clip.string()));
    out.push_back(video_item(std::to_string(out.size()), clip.string(), row[question], row[answer]));
  }
  return out;
}

BenchScore score_video_qa(const std::string& name, const std::vector<BenchItem>& items,
                          const std::vector<std::string>& preds, const std::string& out) {
  json refs = json::array();
  std::string lines;
  for (size_t i = 0; i < items.size(); ++i) {
    refs.push_back({{"question_id", items[i].id}, {"answer", items[i].meta.at("answer")}, {"video", items[i].video}});
    lines += json{{"question_id", items[i].id}, {"prediction", preds[i]}}.dump() + "\n";
  }
  const std::string refs_file = out + "/" + name + "_refs.json", preds_file = out + "/" + name + "_predictions.jsonl";
  write_text(refs_file, refs.dump());
  write_text(preds_file, lines);
  return score_one("video_qa", refs_file, preds_file, "accuracy", "accuracy", 100.0);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

const std::vector<BenchDef>& bench_defs() {
  using std::placeholders::_1;
  using std::placeholders::_2;
  using std::placeholders::_3;
  using std::placeholders::_4;
  const BenchDecoding vqa{10, 1};  // evaluate_vqa/mme/mmbench.py (spec §5.2)
  static const std::vector<BenchDef> defs = {
      {"vqav2", "VQAv2 val: open-ended VQA accuracy (VQAEval as mPLUG-Owl2); test-dev: the EvalAI upload file", vqa,
       [](const std::string& d) { return read_coco_vqa(d, kVqav2Questions); }, identity,
       std::bind(score_coco_vqa, _1, kVqav2Annotations, _2, _3, _4)},
      {"okvqa", "OK-VQA val: VQA accuracy", vqa, [](const std::string& d) { return read_coco_vqa(d, kOkvqaQuestions); },
       identity, std::bind(score_coco_vqa, _1, kOkvqaAnnotations, _2, _3, _4)},
      {"vizwiz", "VizWiz val: VQA accuracy (LLaVA-1.5 prompt); test: the EvalAI upload file", vqa, read_vizwiz,
       identity, score_vizwiz},
      {"textvqa", "TextVQA val without OCR tokens: VQAEval accuracy", vqa,
       [](const std::string& d) { return read_textvqa(d, false); }, identity,
       std::bind(score_textvqa, _1, false, _2, _3, _4)},
      {"textvqa_ocr", "TextVQA val with OCR tokens in the prompt: m4c accuracy", vqa,
       [](const std::string& d) { return read_textvqa(d, true); }, identity,
       std::bind(score_textvqa, _1, true, _2, _3, _4)},
      {"gqa", "GQA test-dev balanced: exact match", vqa, read_gqa, gqa_post, score_gqa},
      {"scienceqa", "ScienceQA test, IMG subset: letter accuracy", vqa, read_scienceqa, identity, score_scienceqa},
      {"pope", "POPE adversarial / popular / random: F1, accuracy, ...", vqa, read_pope, identity, score_pope},
      {"mme", "MME: perception and cognition scores", vqa, read_mme, identity, score_mme},
      {"mmbench", "MMBench: circular accuracy, offline matching", vqa, read_mmbench, identity, score_mmbench},
      {"seed", "SEED-Bench: exact match; video questions on their middle frame where frames or clips are there", vqa,
       read_seed, identity, score_seed},
      {"qbench", "Q-Bench LLVisionQA: letter accuracy (offline matching)", vqa, read_qbench, identity, score_qbench},
      {"mmmu", "MMMU: official multiple-choice and open parsing", BenchDecoding{20, 1}, read_mmmu, identity,
       score_mmmu},
      {"coco", "COCO Karpathy test captions: CIDEr", BenchDecoding{60, 8},
       [](const std::string& d) { return read_captions(d, kCocoCaptionFiles); }, identity,
       std::bind(score_captions, _1, kCocoCaptionFiles, _2, _3, _4)},
      {"flickr30k", "Flickr30K Karpathy test captions: CIDEr", BenchDecoding{60, 8},
       [](const std::string& d) { return read_captions(d, kFlickrCaptionFiles); }, identity,
       std::bind(score_captions, _1, kFlickrCaptionFiles, _2, _3, _4)},
      {"mmlu", "MMLU-style text multiple choice, 5-shot: letter accuracy", BenchDecoding{5, 1}, read_mmlu, identity,
       score_mmlu},
      {"msrvtt_qa", "MSRVTT-QA test, zero-shot: exact match over 8 frames per clip", vqa,
       [](const std::string& d) { return read_video_json_qa(d, {"test_qa.json", "msrvtt_qa_test.json", "test.jsonl"}); },
       identity, [](const std::string&, const auto& items, const auto& preds, const std::string& out) {
         return score_video_qa("msrvtt_qa", items, preds, out);
       }},
      {"msvd_qa", "MSVD-QA test, zero-shot: exact match over 8 frames per clip", vqa,
       [](const std::string& d) { return read_video_json_qa(d, {"test_qa.json", "msvd_qa_test.json", "test.jsonl"}); },
       identity, [](const std::string&, const auto& items, const auto& preds, const std::string& out) {
         return score_video_qa("msvd_qa", items, preds, out);
       }},
      {"tgif_qa", "TGIF-QA FrameQA test, zero-shot: exact match over 8 frames per GIF", vqa, read_tgif_frameqa,
       identity, [](const std::string&, const auto& items, const auto& preds, const std::string& out) {
         return score_video_qa("tgif_qa", items, preds, out);
       }},
  };
  return defs;
}

}  // namespace owl2::eval
