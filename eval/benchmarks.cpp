// MME, POPE, MMBench, ScienceQA, GQA and multiple-choice answer parsing and scoring (eval_metrics.md §2).
#include "eval/benchmarks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "eval/ptb_tokenizer.h"

namespace owl2::eval {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::vector<std::string> split_ws(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !is_space(s[j])) ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::vector<std::string> split_on(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

double ratio(double a, double b) { return b == 0 ? 0.0 : a / b; }

}  // namespace

// ---- MME ----

const std::vector<std::string>& mme_perception_tasks() {
  static const std::vector<std::string> t = {"existence", "count",    "position", "color",    "posters",
                                             "celebrity", "scene",    "landmark", "artwork",  "OCR"};
  return t;
}

const std::vector<std::string>& mme_cognition_tasks() {
  static const std::vector<std::string> t = {"commonsense_reasoning", "numerical_calculation", "text_translation",
                                             "code_reasoning"};
  return t;
}

std::string mme_parse_answer(const std::string& prediction) {
  const std::string p = lower_utf8(prediction);
  if (p == "yes" || p == "no") return p;
  const std::string prefix = p.substr(0, 4);
  if (prefix.find("yes") != std::string::npos) return "yes";
  if (prefix.find("no") != std::string::npos) return "no";
  return "other";
}

MmeReport mme_score(const std::vector<MmeRecord>& records) {
  std::map<std::string, std::vector<const MmeRecord*>> by_task;
  std::vector<std::string> order;
  for (const auto& r : records) {
    const auto& perc = mme_perception_tasks();
    const auto& cogn = mme_cognition_tasks();
    if (std::find(perc.begin(), perc.end(), r.task) == perc.end() &&
        std::find(cogn.begin(), cogn.end(), r.task) == cogn.end())
      throw std::invalid_argument(fmt::format("MME record for image '{}': unknown task '{}'", r.image, r.task));
    by_task[r.task].push_back(&r);
  }
  MmeReport report;
  for (const auto& [task, recs] : by_task) {
    if (recs.size() % 2 != 0)
      throw std::invalid_argument(
          fmt::format("MME task '{}': {} questions, expected two per image", task, recs.size()));
    MmeTaskScore ts;
    size_t correct = 0, both = 0;
    for (size_t i = 0; i < recs.size(); i += 2) {
      if (recs[i]->image != recs[i + 1]->image)
        throw std::invalid_argument(fmt::format("MME task '{}': questions {} and {} pair images '{}' and '{}'", task,
                                                i + 1, i + 2, recs[i]->image, recs[i + 1]->image));
      int image_correct = 0;
      for (const MmeRecord* r : {recs[i], recs[i + 1]}) {
        const std::string gt = lower_utf8(r->gt);
        if (gt != "yes" && gt != "no")
          throw std::invalid_argument(
              fmt::format("MME task '{}', image '{}': ground truth '{}' is not Yes/No", task, r->image, r->gt));
        if (mme_parse_answer(r->prediction) == gt) ++image_correct;
      }
      correct += image_correct;
      both += image_correct == 2;
    }
    ts.questions = recs.size();
    ts.images = recs.size() / 2;
    ts.acc = ratio(correct, ts.questions);
    ts.acc_plus = ratio(both, ts.images);
    ts.score = 100 * ts.acc + 100 * ts.acc_plus;
    const auto& perc = mme_perception_tasks();
    (std::find(perc.begin(), perc.end(), task) != perc.end() ? report.perception : report.cognition) += ts.score;
    report.tasks[task] = ts;
  }
  return report;
}

// ---- POPE ----

std::string pope_parse_answer(const std::string& prediction) {
  std::string text = prediction;
  if (const size_t dot = text.find('.'); dot != std::string::npos) text = text.substr(0, dot);
  text.erase(std::remove(text.begin(), text.end(), ','), text.end());
  for (const auto& w : split_on(text, ' '))
    if (w == "No" || w == "not" || w == "no") return "no";
  return "yes";
}

PopeReport pope_score(const std::vector<std::string>& labels, const std::vector<std::string>& predictions) {
  if (labels.size() != predictions.size())
    throw std::invalid_argument(fmt::format("POPE: {} labels but {} predictions", labels.size(), predictions.size()));
  PopeReport r;
  size_t yes = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] != "yes" && labels[i] != "no")
      throw std::invalid_argument(fmt::format("POPE entry {}: label '{}' is not yes/no", i, labels[i]));
    const bool truth = labels[i] == "yes";
    const bool pred = pope_parse_answer(predictions[i]) == "yes";
    yes += pred;
    if (pred && truth) ++r.tp;
    if (pred && !truth) ++r.fp;
    if (!pred && !truth) ++r.tn;
    if (!pred && truth) ++r.fn;
  }
  const double n = static_cast<double>(labels.size());
  r.precision = ratio(r.tp, r.tp + r.fp);
  r.recall = ratio(r.tp, r.tp + r.fn);
  r.f1 = ratio(2 * r.precision * r.recall, r.precision + r.recall);
  r.accuracy = ratio(r.tp + r.tn, n);
  r.yes_ratio = ratio(yes, n);
  return r;
}

// ---- MMBench ----

std::optional<char> mmbench_infer_option(const std::string& prediction) {
  static const std::string letters = "ABCDE";
  const auto tokens = split_ws(prediction);
  auto present = [&](const std::string& t) { return std::find(tokens.begin(), tokens.end(), t) != tokens.end(); };
  auto count = [&](const std::string& pre, const std::string& suf) {
    int n = 0;
    for (char c : letters) n += present(pre + c + suf);
    return n;
  };
  // A lone "A" in a longer answer may be the article: then only the wrapped forms are tried.
  if (count("", "") == 1 && !(present("A") && tokens.size() > 3))
    for (char c : letters)
      if (present(std::string(1, c))) return c;
  static const std::pair<const char*, const char*> wrappers[] = {
      {"", "."}, {"", ","}, {"", ":"}, {"", ")"}, {"", ")."}, {"(", ")"},
      {"(", ")."}, {":", ""}, {":", ","}, {":", "."}, {":", ")"}, {":", ")."}};
  for (const auto& [pre, suf] : wrappers)
    if (count(pre, suf) == 1)
      for (char c : letters)
        if (present(pre + std::string(1, c) + suf)) return c;
  return std::nullopt;
}

std::optional<char> mmbench_infer_text(const std::string& prediction, const std::map<char, std::string>& options) {
  const std::string p = lower_utf8(prediction);
  std::optional<char> found;
  int n = 0;
  for (const auto& [letter, text] : options)
    if (p.find(lower_utf8(text)) != std::string::npos) {
      found = letter;
      ++n;
    }
  return n == 1 ? found : std::nullopt;
}

std::optional<char> mmbench_infer(const std::string& prediction, const std::map<char, std::string>& options) {
  if (auto c = mmbench_infer_option(prediction)) return c;
  return mmbench_infer_text(prediction, options);
}

MmbenchReport mmbench_circular(const std::vector<MmbenchRow>& rows) {
  constexpr int64_t kCopy = 1000000;
  std::map<int64_t, std::vector<const MmbenchRow*>> groups;  // main index -> copies, sorted by index below
  std::set<int64_t> seen;
  for (const auto& r : rows)
    if (!seen.insert(r.index).second)
      throw std::invalid_argument(fmt::format("MMBench: duplicate index {}", r.index));
  for (const auto& r : rows) {
    if (!seen.count(r.index % kCopy))
      throw std::invalid_argument(
          fmt::format("MMBench: row {} is a copy of question {}, which has no main row", r.index, r.index % kCopy));
    groups[r.index % kCopy].push_back(&r);
  }
  MmbenchReport rep;
  std::map<std::string, std::pair<size_t, size_t>> cat, l2;
  for (auto& [main, copies] : groups) {
    std::sort(copies.begin(), copies.end(), [](auto* a, auto* b) { return a->index < b->index; });
    // Any matched copy with a wrong letter fails the group at once; otherwise unmatched copies would go to
    // the LLM fallback, which offline scores 0 and counts as unresolved.
    int hit = 1;
    bool unresolved = false;
    for (const MmbenchRow* r : copies) {
      const auto pred = mmbench_infer(r->prediction, r->options);
      if (!pred) {
        unresolved = true;
      } else if (*pred != r->answer) {
        hit = 0;
        unresolved = false;
        break;
      }
    }
    if (unresolved) {
      hit = 0;
      ++rep.unresolved;
      rep.unresolved_questions.push_back(main);
    }
    rep.hit[main] = hit;
    rep.hits += hit;
    const MmbenchRow* m = copies.front();
    cat[m->category].first += hit;
    ++cat[m->category].second;
    l2[m->l2_category].first += hit;
    ++l2[m->l2_category].second;
  }
  rep.questions = groups.size();
  rep.accuracy = ratio(rep.hits, rep.questions);
  for (const auto& [k, v] : cat) rep.per_category[k] = ratio(v.first, v.second);
  for (const auto& [k, v] : l2) rep.per_l2_category[k] = ratio(v.first, v.second);
  return rep;
}

// ---- ScienceQA ----

int scienceqa_parse_answer(const std::string& prediction, size_t num_choices) {
  static const std::string options = "ABCDE";
  char letter = 0;
  if (prediction.size() == 1 && options.find(prediction[0]) != std::string::npos) {
    letter = prediction[0];
  } else if (prediction.size() >= 3 && options.find(prediction[0]) != std::string::npos &&
             prediction.compare(1, 2, ". ") == 0) {
    letter = prediction[0];
  } else {
    // re.findall(r'The answer is ([A-Z]).'): the '.' is any character but a newline; exactly one match.
    static const std::string key = "The answer is ";
    std::vector<char> found;
    size_t pos = 0;
    while ((pos = prediction.find(key, pos)) != std::string::npos) {
      const size_t at = pos + key.size();
      if (at + 1 < prediction.size() && prediction[at] >= 'A' && prediction[at] <= 'Z' && prediction[at + 1] != '\n') {
        found.push_back(prediction[at]);
        pos = at + 2;
      } else {
        pos += 1;
      }
    }
    if (found.size() == 1) letter = found[0];
  }
  if (!letter) return -1;
  const size_t idx = options.find(letter);
  return idx < std::min(num_choices, options.size()) ? static_cast<int>(idx) : -1;
}

// ---- GQA ----

std::string gqa_postprocess(const std::string& prediction) {
  std::string s = prediction;
  while (!s.empty() && s.back() == '.') s.pop_back();
  return lower_utf8(s);
}

// ---- multiple choice ----

std::optional<char> parse_choice_letter(const std::string& prediction, size_t num_choices) {
  const std::string valid = std::string("ABCDEFGHIJ").substr(0, std::min<size_t>(num_choices, 10));
  auto letter_at = [&](const std::string& s, size_t i) -> std::optional<char> {
    // A valid letter at i that stands alone: not preceded or followed by another letter.
    if (i >= s.size() || valid.find(s[i]) == std::string::npos) return std::nullopt;
    auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    if (i > 0 && alpha(s[i - 1])) return std::nullopt;
    if (i + 1 < s.size() && alpha(s[i + 1])) return std::nullopt;
    return s[i];
  };
  size_t b = 0;
  while (b < prediction.size() && (is_space(prediction[b]) || prediction[b] == '(' || prediction[b] == '['))
    ++b;
  if (auto c = letter_at(prediction, b)) return c;
  const std::string lower = lower_utf8(prediction);
  for (const char* key : {"answer is", "answer:", "option"}) {
    const size_t pos = lower.find(key);
    if (pos == std::string::npos) continue;
    size_t i = pos + std::char_traits<char>::length(key);
    while (i < prediction.size() && (is_space(prediction[i]) || prediction[i] == '(' || prediction[i] == ':')) ++i;
    if (auto c = letter_at(prediction, i)) return c;
  }
  return std::nullopt;
}

std::optional<char> mmmu_parse_multi_choice(const std::string& prediction, const std::map<char, std::string>& options) {
  std::string r = prediction;
  for (char ch : {',', '.', '!', '?', ';', ':', '\''}) {  // str.strip(ch), one character after another
    size_t b = 0, e = r.size();
    while (b < e && r[b] == ch) ++b;
    while (e > b && r[e - 1] == ch) --e;
    r = r.substr(b, e - b);
  }
  r = " " + r + " ";
  std::vector<char> cands;
  bool bracketed = false, by_text = false;
  for (const auto& kv : options)
    if (r.find(std::string("(") + kv.first + ")") != std::string::npos) {
      cands.push_back(kv.first);
      bracketed = true;
    }
  if (cands.empty())
    for (const auto& kv : options)
      if (r.find(std::string(" ") + kv.first + " ") != std::string::npos) cands.push_back(kv.first);
  const std::string lower = lower_utf8(r);
  if (cands.empty() && split_ws(r).size() > 5)
    for (const auto& [letter, text] : options)
      if (lower.find(lower_utf8(text)) != std::string::npos) {
        cands.push_back(letter);
        by_text = true;
      }
  if (cands.empty()) return std::nullopt;
  if (cands.size() == 1) return cands[0];
  // Several: the one whose last occurrence starts last (first of equal positions).
  char best = cands[0];
  long best_pos = -2;
  for (char c : cands) {
    size_t p;
    if (by_text) {
      p = lower.rfind(lower_utf8(options.at(c)));
    } else if (bracketed) {
      p = r.rfind(std::string("(") + c + ")");
    } else {
      p = r.rfind(std::string(" ") + c + " ");
    }
    const long pos = p == std::string::npos ? -1 : static_cast<long>(p);
    if (pos > best_pos) {
      best_pos = pos;
      best = c;
    }
  }
  return best;
}

// ---- MMMU open questions ----

namespace {

std::string py_strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// check_is_number: Python's float() after removing commas (decimal, exponent, inf, nan).
bool parse_py_float(const std::string& text, double& out) {
  std::string s;
  for (char c : text)
    if (c != ',') s += c;
  static const std::regex number(R"(^[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)$)", std::regex::icase);
  if (!std::regex_match(s, number)) return false;
  out = std::strtod(s.c_str(), nullptr);
  return true;
}

// Python's round(x, 2): correctly rounded from the binary value, as printf's %.2f is.
double round2_py(double x) {
  if (!std::isfinite(x)) return x;
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.2f", x);
  return std::strtod(buf, nullptr);
}

std::vector<std::string> mmmu_extract_numbers(const std::string& s) {
  static const std::regex commas(R"(-?\b\d{1,3}(?:,\d{3})+\b)");
  static const std::regex scientific(R"(-?\d+(?:\.\d+)?[eE][+-]?\d+)");
  static const std::regex simple(R"(-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d]))");
  std::vector<std::string> out;
  for (const std::regex* re : {&commas, &scientific, &simple})
    for (auto it = std::sregex_iterator(s.begin(), s.end(), *re); it != std::sregex_iterator(); ++it)
      out.push_back(it->str());
  return out;
}

}  // namespace

std::vector<MmmuValue> mmmu_normalize(const std::string& answer) {
  const std::string s = py_strip(answer);
  double x;
  if (parse_py_float(s, x)) {
    MmmuValue v;
    v.is_number = true;
    v.number = round2_py(x);
    return {v};
  }
  const std::string lower = lower_utf8(s);
  if (code_points(lower) == 1) return {MmmuValue{false, 0, " " + lower}, MmmuValue{false, 0, lower + " "}};
  return {MmmuValue{false, 0, lower}};
}

std::vector<MmmuValue> mmmu_parse_open(const std::string& response) {
  // get_key_subresponses: strip, strip('.'), lower. The reference's split pattern '\.\s(?=[A-Z])|\n' runs on
  // lower-cased text, so only the newlines split.
  std::string r = py_strip(response);
  {
    size_t b = 0, e = r.size();
    while (b < e && r[b] == '.') ++b;
    while (e > b && r[e - 1] == '.') --e;
    r = lower_utf8(r.substr(b, e - b));
  }
  const std::vector<std::string> lines = split_on(r, '\n');
  std::vector<std::string> indicators = {"could be ",  "so ",    "is ",     "thus ",
                                         "therefore ", "final ", "answer ", "result "};
  std::vector<std::string> keys;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i + 1 == lines.size()) indicators.push_back("=");
    const std::string& line = lines[i];
    std::string shortest;  // empty counts as "none yet", as the reference's truth test does
    for (const auto& ind : indicators) {
      const size_t pos = line.rfind(ind);
      if (pos == std::string::npos) continue;
      const std::string tail = py_strip(line.substr(pos + ind.size()));
      if (shortest.empty() || code_points(tail) < code_points(shortest)) shortest = tail;
    }
    static const std::set<std::string> trivial = {":", ",", ".", "!", "?", ";", "'"};
    if (!shortest.empty() && !trivial.count(py_strip(shortest))) keys.push_back(shortest);
  }
  if (keys.empty()) keys.push_back(r);
  std::vector<std::string> all = keys;
  for (const auto& k : keys) {
    const auto nums = mmmu_extract_numbers(k);
    all.insert(all.end(), nums.begin(), nums.end());
  }
  std::vector<MmmuValue> out;
  for (const auto& s : all)
    for (const auto& v : mmmu_normalize(s))
      if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  return out;
}

bool mmmu_eval_open(const std::vector<std::string>& gold, const std::vector<MmmuValue>& parsed) {
  std::vector<MmmuValue> norm;
  for (const auto& g : gold) {
    const auto v = mmmu_normalize(g);
    norm.insert(norm.end(), v.begin(), v.end());
  }
  for (const auto& p : parsed) {
    for (const auto& n : norm) {
      if (p.is_number ? (n.is_number && n.number == p.number)
                      : (!n.is_number && p.text.find(n.text) != std::string::npos))
        return true;
    }
  }
  return false;
}

}  // namespace owl2::eval
