// Public-format readers for POPE, MME, MMBench and ScienceQA (eval_metrics.md §2).
#include "eval/bench_files.h"

#include "eval/bench_suite.h"
#include "eval/vqa_accuracy.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace owl2::eval {
namespace {

using nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::invalid_argument(fmt::format("{}: cannot open file", path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A record of a JSON-lines file or of a JSON array, with where it came from ("line 3" / "entry 2").
struct Record {
  json value;
  std::string where;
};

std::vector<Record> read_records(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<Record> out;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    json arr;
    try {
      arr = json::parse(text);
    } catch (const json::parse_error& e) {
      throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", path, e.what()));
    }
    for (size_t i = 0; i < arr.size(); ++i) out.push_back({arr[i], fmt::format("entry {}", i)});
    return out;
  }
  std::istringstream lines(text);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.push_back({json::parse(line), fmt::format("line {}", n)});
    } catch (const json::parse_error& e) {
      throw std::invalid_argument(fmt::format("{}: line {}: invalid JSON: {}", path, n, e.what()));
    }
  }
  return out;
}

const json& need(const std::string& path, const Record& r, const char* key) {
  if (!r.value.is_object())
    throw std::invalid_argument(fmt::format("{}: {}: expected an object, found {}", path, r.where, r.value.type_name()));
  const auto it = r.value.find(key);
  if (it == r.value.end()) throw std::invalid_argument(fmt::format("{}: {}: missing key '{}'", path, r.where, key));
  return *it;
}

std::string need_string(const std::string& path, const Record& r, const char* key) {
  const json& v = need(path, r, key);
  if (!v.is_string())
    throw std::invalid_argument(
        fmt::format("{}: {}: '{}' must be a string, found {} {}", path, r.where, key, v.type_name(), v.dump()));
  return v.get<std::string>();
}

// Ids may be integers or strings in these files; they are compared as their JSON text without quotes.
std::string need_id(const std::string& path, const Record& r, const char* key) {
  const json& v = need(path, r, key);
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_string()) return v.get<std::string>();
  throw std::invalid_argument(fmt::format("{}: {}: '{}' must be an integer or a string, found {} {}", path, r.where,
                                          key, v.type_name(), v.dump()));
}

// Predictions keyed by id; `text_keys` are tried in order (LLaVA writes "text", result files "answer").
std::map<std::string, std::string> read_predictions(const std::string& path, const char* id_key,
                                                    std::initializer_list<const char*> text_keys) {
  std::map<std::string, std::string> out;
  std::map<std::string, std::string> where;
  for (const auto& r : read_records(path)) {
    const std::string id = need_id(path, r, id_key);
    const char* key = nullptr;
    for (const char* k : text_keys)
      if (r.value.contains(k)) {
        key = k;
        break;
      }
    if (!key) throw std::invalid_argument(fmt::format("{}: {}: missing key '{}'", path, r.where, *text_keys.begin()));
    const std::string text = need_string(path, r, key);
    if (!out.emplace(id, text).second)
      throw std::invalid_argument(
          fmt::format("{}: {}: duplicate {} {} (first at {})", path, r.where, id_key, id, where[id]));
    where[id] = r.where;
  }
  return out;
}

template <typename Ids>
void check_no_extra(const std::string& preds_path, const std::map<std::string, std::string>& preds, const Ids& known,
                    const char* id_key, const std::string& refs_path) {
  for (const auto& kv : preds)
    if (!known.count(kv.first))
      throw std::invalid_argument(
          fmt::format("{}: {} {} is not in {}", preds_path, id_key, kv.first, refs_path));
}

// One row of a tab-separated file with pandas-style quoting ("a ""b"" c", fields may span lines).
bool next_tsv_row(const std::string& text, size_t& pos, std::vector<std::string>& row) {
  row.clear();
  if (pos >= text.size()) return false;
  std::string field;
  bool quoted = false;
  while (pos < text.size()) {
    const char c = text[pos++];
    if (quoted) {
      if (c == '"' && pos < text.size() && text[pos] == '"') {
        field += '"';
        ++pos;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"' && field.empty()) {
      quoted = true;
    } else if (c == '\t') {
      row.push_back(std::move(field));
      field.clear();
    } else if (c == '\n') {
      break;
    } else if (c != '\r') {
      field += c;
    }
  }
  row.push_back(std::move(field));
  return true;
}

}  // namespace

PopeReport score_pope_files(const std::string& questions_path, const std::string& answers_path) {
  std::vector<std::string> ids, labels;
  std::map<std::string, std::string> seen;
  for (const auto& r : read_records(questions_path)) {
    const std::string id = need_id(questions_path, r, "question_id");
    const std::string label = need_string(questions_path, r, "label");
    if (label != "yes" && label != "no")
      throw std::invalid_argument(fmt::format("{}: {}: label '{}' is not yes/no", questions_path, r.where, label));
    if (!seen.emplace(id, r.where).second)
      throw std::invalid_argument(fmt::format("{}: {}: duplicate question_id {} (first at {})", questions_path,
                                              r.where, id, seen[id]));
    ids.push_back(id);
    labels.push_back(label);
  }
  const auto preds = read_predictions(answers_path, "question_id", {"text", "answer"});
  check_no_extra(answers_path, preds, seen, "question_id", questions_path);
  std::vector<std::string> answers;
  for (const auto& id : ids) {
    const auto it = preds.find(id);
    if (it == preds.end())
      throw std::invalid_argument(fmt::format("{}: no answer for question_id {}", answers_path, id));
    answers.push_back(it->second);
  }
  return pope_score(labels, answers);
}

MmeReport score_mme_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw std::invalid_argument(fmt::format("{}: not a directory", dir));
  std::vector<std::string> tasks = mme_perception_tasks();
  tasks.insert(tasks.end(), mme_cognition_tasks().begin(), mme_cognition_tasks().end());
  std::vector<MmeRecord> records;
  for (const auto& task : tasks) {
    const fs::path file = fs::path(dir) / (task + ".txt");
    if (!fs::exists(file)) continue;
    std::istringstream lines(read_file(file.string()));
    std::string line;
    for (size_t n = 1; std::getline(lines, line); ++n) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      std::vector<std::string> cols;
      size_t start = 0;
      for (size_t i = 0; i <= line.size(); ++i)
        if (i == line.size() || line[i] == '\t') {
          cols.push_back(line.substr(start, i - start));
          start = i + 1;
        }
      if (cols.size() != 4)
        throw std::invalid_argument(fmt::format("{}: line {}: expected 4 tab-separated columns (image, question, "
                                                "answer, prediction), found {}", file.string(), n, cols.size()));
      records.push_back({task, cols[0], cols[1], cols[2], cols[3]});
    }
  }
  if (records.empty())
    throw std::invalid_argument(fmt::format("{}: no MME task files (<task>.txt, e.g. existence.txt)", dir));
  try {
    return mme_score(records);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{}: {}", dir, e.what()));
  }
}

MmbenchReport score_mmbench_files(const std::string& tsv_path, const std::string& preds_path) {
  const std::string text = read_file(tsv_path);
  size_t pos = 0;
  std::vector<std::string> header, row;
  if (!next_tsv_row(text, pos, header)) throw std::invalid_argument(fmt::format("{}: empty file", tsv_path));
  auto col = [&](const char* name, bool required) -> long {
    const auto it = std::find(header.begin(), header.end(), name);
    if (it == header.end()) {
      if (required) throw std::invalid_argument(fmt::format("{}: header has no column '{}'", tsv_path, name));
      return -1;
    }
    return it - header.begin();
  };
  const long c_index = col("index", true), c_answer = col("answer", true);
  const long c_cat = col("category", false), c_l2 = col("l2-category", false), c_split = col("split", false);
  std::map<char, long> c_opt;
  for (char L : std::string("ABCDE"))
    if (const long c = col(std::string(1, L).c_str(), false); c >= 0) c_opt[L] = c;
  const auto preds = read_predictions(preds_path, "index", {"prediction", "text", "answer"});
  std::vector<MmbenchRow> rows;
  std::map<std::string, size_t> known;
  for (size_t line = 2; next_tsv_row(text, pos, row); ++line) {
    if (row.size() == 1 && row[0].empty()) continue;
    if (row.size() != header.size())
      throw std::invalid_argument(fmt::format("{}: row {}: {} fields, the header has {}", tsv_path, line, row.size(),
                                              header.size()));
    MmbenchRow r;
    const std::string& idx = row[c_index];
    try {
      size_t used = 0;
      r.index = std::stoll(idx, &used);
      if (used != idx.size()) throw std::invalid_argument("trailing text");
    } catch (const std::exception&) {
      throw std::invalid_argument(fmt::format("{}: row {}: index '{}' is not an integer", tsv_path, line, idx));
    }
    const std::string& ans = row[c_answer];
    if (ans.size() != 1 || ans[0] < 'A' || ans[0] > 'E')
      throw std::invalid_argument(fmt::format("{}: row {} (index {}): answer '{}' is not a letter A-E", tsv_path, line,
                                              r.index, ans));
    r.answer = ans[0];
    for (const auto& [L, c] : c_opt)
      if (!row[c].empty() && row[c] != "nan") r.options[L] = row[c];  // pandas writes missing options as empty
    if (c_cat >= 0) r.category = row[c_cat];
    if (c_l2 >= 0) r.l2_category = row[c_l2];
    if (c_split >= 0) r.split = row[c_split];
    const std::string key = std::to_string(r.index);
    const auto it = preds.find(key);
    if (it == preds.end())
      throw std::invalid_argument(fmt::format("{}: no prediction for index {} ({}, row {})", preds_path, r.index,
                                              tsv_path, line));
    r.prediction = it->second;
    known[key] = line;
    rows.push_back(std::move(r));
  }
  check_no_extra(preds_path, preds, known, "index", tsv_path);
  try {
    return mmbench_circular(rows);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{}: {}", tsv_path, e.what()));
  }
}

ScienceqaReport score_scienceqa_files(const std::string& problems_path, const std::string& preds_path) {
  json problems;
  try {
    problems = json::parse(read_file(problems_path));
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", problems_path, e.what()));
  }
  if (!problems.is_object())
    throw std::invalid_argument(fmt::format("{}: expected an object of problems keyed by id", problems_path));
  const auto preds = read_predictions(preds_path, "question_id", {"text", "answer"});
  ScienceqaReport rep;
  for (const auto& [pid, text] : preds) {
    const auto it = problems.find(pid);
    if (it == problems.end())
      throw std::invalid_argument(fmt::format("{}: question_id {} is not in {}", preds_path, pid, problems_path));
    const json& p = *it;
    const std::string where = fmt::format("{}: problem {}", problems_path, pid);
    if (!p.is_object() || !p.contains("choices") || !p["choices"].is_array())
      throw std::invalid_argument(where + ": 'choices' must be an array");
    if (!p.contains("answer") || !p["answer"].is_number_integer())
      throw std::invalid_argument(where + ": 'answer' must be an integer");
    const bool has_image = p.contains("image") && p["image"].is_string() && !p["image"].get<std::string>().empty();
    const bool correct = scienceqa_parse_answer(text, p["choices"].size()) == p["answer"].get<int>();
    ++rep.total;
    rep.correct += correct;
    rep.img_total += has_image;
    rep.img_correct += has_image && correct;
  }
  rep.accuracy = rep.total ? static_cast<double>(rep.correct) / rep.total : 0.0;
  rep.img_accuracy = rep.img_total ? static_cast<double>(rep.img_correct) / rep.img_total : 0.0;
  return rep;
}

namespace {

json read_json_file(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON: {}", path, e.what()));
  }
}

double frac(size_t a, size_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; }

}  // namespace

std::string video_qa_normalize(const std::string& answer) {
  std::string a = answer;
  for (auto& c : a) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto& c : a)
    if (c == '\n' || c == '\t') c = ' ';
  a = vqa_process_digit_article(vqa_process_punctuation(a));
  const auto b = a.find_first_not_of(' ');
  return b == std::string::npos ? std::string() : a.substr(b, a.find_last_not_of(' ') - b + 1);
}

VideoQaReport score_video_qa_files(const std::string& refs_path, const std::string& preds_path) {
  const auto preds = read_predictions(preds_path, "question_id", {"prediction", "answer", "text"});
  std::set<std::string> known;
  VideoQaReport rep;
  for (const auto& r : read_records(refs_path)) {
    const std::string id = need_id(refs_path, r, "question_id");
    const std::string answer = need_string(refs_path, r, "answer");
    if (!known.insert(id).second) throw std::invalid_argument(fmt::format("{}: question_id {} twice", refs_path, id));
    const auto it = preds.find(id);
    if (it == preds.end()) throw std::invalid_argument(fmt::format("{}: no prediction for question_id {}", preds_path, id));
    ++rep.questions;
    rep.correct += video_qa_normalize(it->second) == video_qa_normalize(answer);
  }
  for (const auto& kv : preds)
    if (!known.count(kv.first))
      throw std::invalid_argument(fmt::format("{}: question_id {} is not in {}", preds_path, kv.first, refs_path));
  rep.accuracy = frac(rep.correct, rep.questions);
  return rep;
}

GqaReport score_gqa_files(const std::string& questions_path, const std::string& preds_path) {
  const json questions = read_json_file(questions_path);
  if (!questions.is_object())
    throw std::invalid_argument(fmt::format("{}: expected an object of questions keyed by id", questions_path));
  const auto preds = read_predictions(preds_path, "questionId", {"prediction"});
  for (const auto& kv : preds)
    if (!questions.contains(kv.first))
      throw std::invalid_argument(
          fmt::format("{}: questionId {} is not in {}", preds_path, kv.first, questions_path));
  GqaReport rep;
  size_t n_open = 0, c_open = 0, n_bin = 0, c_bin = 0;
  for (const auto& [qid, q] : questions.items()) {
    const std::string where = fmt::format("{}: question {}", questions_path, qid);
    if (!q.is_object() || !q.contains("answer") || !q["answer"].is_string())
      throw std::invalid_argument(where + ": 'answer' must be a string");
    if (!q.value("isBalanced", false)) continue;
    const auto it = preds.find(qid);
    if (it == preds.end()) throw std::invalid_argument(fmt::format("{}: no prediction for questionId {}", preds_path, qid));
    const bool correct = gqa_postprocess(it->second) == q["answer"].get<std::string>();
    const bool open = q.contains("types") && q["types"].is_object() && q["types"].value("structural", "") == "query";
    ++rep.questions;
    rep.correct += correct;
    (open ? n_open : n_bin) += 1;
    (open ? c_open : c_bin) += correct;
  }
  rep.accuracy = frac(rep.correct, rep.questions);
  rep.open = frac(c_open, n_open);
  rep.binary = frac(c_bin, n_bin);
  return rep;
}

SeedReport score_seed_files(const std::string& benchmark_path, const std::string& preds_path) {
  const json bench = read_json_file(benchmark_path);
  if (!bench.is_object() || !bench.contains("questions") || !bench["questions"].is_array())
    throw std::invalid_argument(fmt::format("{}: expected an object with a 'questions' array", benchmark_path));
  std::map<int64_t, std::string> type_names;
  if (bench.contains("question_type") && bench["question_type"].is_object())
    for (const auto& [name, id] : bench["question_type"].items())
      if (id.is_number_integer()) type_names[id.get<int64_t>()] = name;
  const auto preds = read_predictions(preds_path, "question_id", {"prediction", "text"});
  std::map<std::string, bool> known;
  SeedReport rep;
  std::map<std::string, std::pair<size_t, size_t>> by_type, by_data;
  const json& qs = bench["questions"];
  for (size_t i = 0; i < qs.size(); ++i) {
    const Record r{qs[i], fmt::format("questions[{}]", i)};
    const std::string id = need_id(benchmark_path, r, "question_id");
    const std::string answer = need_string(benchmark_path, r, "answer");
    known[id] = true;
    const auto it = preds.find(id);
    if (it == preds.end()) {
      ++rep.missing;
      continue;
    }
    const bool correct = it->second == answer;
    std::string type = "unknown";
    if (qs[i].contains("question_type_id") && qs[i]["question_type_id"].is_number_integer()) {
      const int64_t t = qs[i]["question_type_id"].get<int64_t>();
      type = type_names.count(t) ? type_names[t] : std::to_string(t);
    }
    const std::string data = qs[i].value("data_type", "image");
    ++rep.questions;
    rep.correct += correct;
    by_type[type].first += correct;
    ++by_type[type].second;
    by_data[data].first += correct;
    ++by_data[data].second;
  }
  check_no_extra(preds_path, preds, known, "question_id", benchmark_path);
  rep.accuracy = frac(rep.correct, rep.questions);
  rep.image = frac(by_data["image"].first, by_data["image"].second);
  rep.video = frac(by_data["video"].first, by_data["video"].second);
  for (const auto& [t, p] : by_type) rep.per_type[t] = frac(p.first, p.second);
  return rep;
}

TsvFile read_tsv(const std::string& path) {
  const std::string text = read_file(path);
  TsvFile out;
  size_t pos = 0;
  if (!next_tsv_row(text, pos, out.header)) throw std::invalid_argument(fmt::format("{}: empty file", path));
  std::vector<std::string> row;
  for (size_t line = 2; next_tsv_row(text, pos, row); ++line) {
    if (row.size() == 1 && row[0].empty()) continue;
    out.rows.emplace_back(line, row);
  }
  return out;
}

QbenchReport score_qbench_files(const std::string& questions_path, const std::string& preds_path) {
  const json root = read_json_file(questions_path);
  if (!root.is_array())
    throw std::invalid_argument(fmt::format("{}: expected a JSON array of questions", questions_path));
  const auto preds = read_predictions(preds_path, "id", {"prediction", "text"});
  std::map<std::string, bool> known;
  QbenchReport rep;
  std::map<std::string, std::pair<size_t, size_t>> by_type, by_concern;
  for (size_t i = 0; i < root.size(); ++i) {
    const Record r{root[i], fmt::format("entry {}", i)};
    const std::string id = std::to_string(i);
    known[id] = true;
    const json& cands = need(questions_path, r, "candidates");
    if (!cands.is_array())
      throw std::invalid_argument(fmt::format("{}: entry {}: 'candidates' must be an array", questions_path, i));
    const std::string correct = need_string(questions_path, r, "correct_ans");
    const auto it = preds.find(id);
    if (it == preds.end()) continue;  // not evaluated (--limit)
    std::map<char, std::string> options;
    for (size_t k = 0; k < cands.size() && k < 26; ++k) {
      if (!cands[k].is_string())
        throw std::invalid_argument(fmt::format("{}: entry {}: candidates[{}] must be a string", questions_path, i, k));
      options[static_cast<char>('A' + k)] = cands[k].get<std::string>();
    }
    const auto letter = mmbench_infer(it->second, options);
    const bool ok = letter && options[*letter] == correct;
    ++rep.questions;
    rep.correct += ok;
    rep.unresolved += !letter;
    auto tally = [&](std::map<std::string, std::pair<size_t, size_t>>& m, const char* key) {
      const std::string k =
          root[i].contains(key) && root[i][key].is_string() ? root[i][key].get<std::string>() : "unknown";
      m[k].first += ok;
      ++m[k].second;
    };
    tally(by_type, "type");
    tally(by_concern, "concern");
  }
  check_no_extra(preds_path, preds, known, "id", questions_path);
  rep.accuracy = frac(rep.correct, rep.questions);
  for (const auto& [k, p] : by_type) rep.per_type[k] = frac(p.first, p.second);
  for (const auto& [k, p] : by_concern) rep.per_concern[k] = frac(p.first, p.second);
  return rep;
}

// Defined in bench_suite.cpp: a record's options (a JSON list or the dataset's Python list text).
std::vector<std::string> mmmu_options(const std::string& file, const std::string& where, const nlohmann::json& rec);

MmmuReport score_mmmu_files(const std::string& questions_path, const std::string& preds_path) {
  const auto preds = read_predictions(preds_path, "id", {"prediction", "text"});
  std::map<std::string, bool> known;
  MmmuReport rep;
  std::map<std::string, std::pair<size_t, size_t>> by_subject;
  for (const auto& r : read_records(questions_path)) {
    const std::string id = need_string(questions_path, r, "id");
    if (known.count(id))
      throw std::invalid_argument(fmt::format("{}: {}: duplicate id {}", questions_path, r.where, id));
    known[id] = true;
    const std::string type = need_string(questions_path, r, "question_type");
    const json& answer = need(questions_path, r, "answer");
    const auto it = preds.find(id);
    if (it == preds.end()) continue;
    bool ok = false;
    if (type == "multiple-choice") {
      if (!answer.is_string())
        throw std::invalid_argument(
            fmt::format("{}: {}: 'answer' must be a letter string, found {}", questions_path, r.where, answer.dump()));
      const auto opts = mmmu_options(questions_path, r.where, r.value);
      std::map<char, std::string> options;
      for (size_t k = 0; k < opts.size() && k < 26; ++k) options[static_cast<char>('A' + k)] = opts[k];
      const auto letter = mmmu_parse_multi_choice(it->second, options);
      rep.unparsed += !letter;
      ok = letter && std::string(1, *letter) == answer.get<std::string>();
    } else if (type == "open") {
      std::vector<std::string> gold;
      if (answer.is_array()) {
        for (const auto& a : answer) {
          if (!a.is_string())
            throw std::invalid_argument(fmt::format("{}: {}: answers must be strings", questions_path, r.where));
          gold.push_back(a.get<std::string>());
        }
      } else if (answer.is_string()) {
        gold.push_back(answer.get<std::string>());
      } else {
        throw std::invalid_argument(fmt::format("{}: {}: 'answer' must be a string or a list, found {}", questions_path,
                                                r.where, answer.dump()));
      }
      ok = mmmu_eval_open(gold, mmmu_parse_open(it->second));
    } else {
      throw std::invalid_argument(
          fmt::format("{}: {}: question_type '{}' is not multiple-choice/open", questions_path, r.where, type));
    }
    // "validation_Art_Theory_12" -> "Art_Theory"
    std::string subject = id;
    const size_t a = subject.find('_'), b = subject.rfind('_');
    if (a != std::string::npos && b > a) subject = subject.substr(a + 1, b - a - 1);
    ++rep.questions;
    rep.correct += ok;
    by_subject[subject].first += ok;
    ++by_subject[subject].second;
  }
  check_no_extra(preds_path, preds, known, "id", questions_path);
  rep.accuracy = frac(rep.correct, rep.questions);
  for (const auto& [k, p] : by_subject) rep.per_subject[k] = frac(p.first, p.second);
  return rep;
}

MmluReport score_mmlu_files(const std::string& data_dir, const std::string& preds_path) {
  namespace fs = std::filesystem;
  const auto preds = read_predictions(preds_path, "question_id", {"prediction", "text"});
  std::map<std::string, std::vector<std::vector<std::string>>> tests;  // subject -> rows
  std::map<std::string, std::pair<size_t, size_t>> by_subject;
  MmluReport rep;
  for (const auto& [id, pred] : preds) {
    const size_t slash = id.rfind('/');
    const std::string subject = slash == std::string::npos ? "" : id.substr(0, slash);
    size_t row = 0;
    try {
      size_t used = 0;
      row = std::stoul(id.substr(slash + 1), &used);
      if (slash == std::string::npos || used != id.size() - slash - 1) throw std::invalid_argument("bad");
    } catch (const std::exception&) {
      throw std::invalid_argument(fmt::format("{}: question_id '{}' is not '<subject>/<row>'", preds_path, id));
    }
    const std::string file = (fs::path(data_dir) / "test" / (subject + "_test.csv")).string();
    if (!tests.count(subject)) {
      if (!fs::exists(file))
        throw std::invalid_argument(fmt::format("{}: question_id {}: no file {}", preds_path, id, file));
      tests[subject] = read_csv(file);
    }
    const auto& rows = tests[subject];
    if (row >= rows.size())
      throw std::invalid_argument(fmt::format("{}: question_id {}: {} has {} rows", preds_path, id, file, rows.size()));
    if (rows[row].size() != 6 || rows[row][5].size() != 1 || rows[row][5][0] < 'A' || rows[row][5][0] > 'D')
      throw std::invalid_argument(
          fmt::format("{}: row {}: expected question, A, B, C, D and an answer letter A-D", file, row + 1));
    const auto letter = parse_choice_letter(pred, 4);
    const bool ok = letter && *letter == rows[row][5][0];
    ++rep.questions;
    rep.correct += ok;
    by_subject[subject].first += ok;
    ++by_subject[subject].second;
  }
  rep.micro = frac(rep.correct, rep.questions);
  double sum = 0;
  for (const auto& [k, p] : by_subject) sum += rep.per_subject[k] = frac(p.first, p.second);
  rep.macro = by_subject.empty() ? 0.0 : sum / static_cast<double>(by_subject.size());
  return rep;
}

}  // namespace owl2::eval
