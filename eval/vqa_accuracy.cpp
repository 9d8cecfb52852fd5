// VQA answer normalization and leave-one-out accuracy (eval_metrics.md §1.3-1.5).
#include "eval/vqa_accuracy.h"

#include <algorithm>
#include <set>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>

#include "eval/ptb_tokenizer.h"

namespace owl2::eval {
namespace {

// The 21 characters, in the reference's order (',' ':' '.' are handled separately or not at all).
constexpr const char* kPunct[] = {";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+",
                                  "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"};

const std::unordered_map<std::string, std::string>& number_words() {
  static const std::unordered_map<std::string, std::string> m = {
      {"none", "0"}, {"zero", "0"}, {"one", "1"}, {"two", "2"},   {"three", "3"}, {"four", "4"},
      {"five", "5"}, {"six", "6"},  {"seven", "7"}, {"eight", "8"}, {"nine", "9"}, {"ten", "10"}};
  return m;
}

// The contraction table of the current official evaluation (ASCII apostrophes; keys are case-sensitive,
// so the capitalized ones never match after lower-casing; "somebody'd" maps backwards, as there).
const std::unordered_map<std::string, std::string>& contractions() {
  static const std::unordered_map<std::string, std::string> m = {
      {"aint", "ain't"}, {"arent", "aren't"}, {"cant", "can't"}, {"couldve", "could've"},
      {"couldnt", "couldn't"}, {"couldn'tve", "couldn't've"}, {"couldnt've", "couldn't've"},
      {"didnt", "didn't"}, {"doesnt", "doesn't"}, {"dont", "don't"}, {"hadnt", "hadn't"},
      {"hadnt've", "hadn't've"}, {"hadn'tve", "hadn't've"}, {"hasnt", "hasn't"}, {"havent", "haven't"},
      {"hed", "he'd"}, {"hed've", "he'd've"}, {"he'dve", "he'd've"}, {"hes", "he's"}, {"howd", "how'd"},
      {"howll", "how'll"}, {"hows", "how's"}, {"Id've", "I'd've"}, {"I'dve", "I'd've"}, {"Im", "I'm"},
      {"Ive", "I've"}, {"isnt", "isn't"}, {"itd", "it'd"}, {"itd've", "it'd've"}, {"it'dve", "it'd've"},
      {"itll", "it'll"}, {"let's", "let's"}, {"maam", "ma'am"}, {"mightnt", "mightn't"},
      {"mightnt've", "mightn't've"}, {"mightn'tve", "mightn't've"}, {"mightve", "might've"},
      {"mustnt", "mustn't"}, {"mustve", "must've"}, {"neednt", "needn't"}, {"notve", "not've"},
      {"oclock", "o'clock"}, {"oughtnt", "oughtn't"}, {"ow's'at", "'ow's'at"}, {"'ows'at", "'ow's'at"},
      {"'ow'sat", "'ow's'at"}, {"shant", "shan't"}, {"shed've", "she'd've"}, {"she'dve", "she'd've"},
      {"she's", "she's"}, {"shouldve", "should've"}, {"shouldnt", "shouldn't"}, {"shouldnt've", "shouldn't've"},
      {"shouldn'tve", "shouldn't've"}, {"somebody'd", "somebodyd"}, {"somebodyd've", "somebody'd've"},
      {"somebody'dve", "somebody'd've"}, {"somebodyll", "somebody'll"}, {"somebodys", "somebody's"},
      {"someoned", "someone'd"}, {"someoned've", "someone'd've"}, {"someone'dve", "someone'd've"},
      {"someonell", "someone'll"}, {"someones", "someone's"}, {"somethingd", "something'd"},
      {"somethingd've", "something'd've"}, {"something'dve", "something'd've"}, {"somethingll", "something'll"},
      {"thats", "that's"}, {"thered", "there'd"}, {"thered've", "there'd've"}, {"there'dve", "there'd've"},
      {"therere", "there're"}, {"theres", "there's"}, {"theyd", "they'd"}, {"theyd've", "they'd've"},
      {"they'dve", "they'd've"}, {"theyll", "they'll"}, {"theyre", "they're"}, {"theyve", "they've"},
      {"twas", "'twas"}, {"wasnt", "wasn't"}, {"wed've", "we'd've"}, {"we'dve", "we'd've"}, {"weve", "we've"},
      {"werent", "weren't"}, {"whatll", "what'll"}, {"whatre", "what're"}, {"whats", "what's"},
      {"whatve", "what've"}, {"whens", "when's"}, {"whered", "where'd"}, {"wheres", "where's"},
      {"whereve", "where've"}, {"whod", "who'd"}, {"whod've", "who'd've"}, {"who'dve", "who'd've"},
      {"wholl", "who'll"}, {"whos", "who's"}, {"whove", "who've"}, {"whyll", "why'll"}, {"whyre", "why're"},
      {"whys", "why's"}, {"wont", "won't"}, {"wouldve", "would've"}, {"wouldnt", "wouldn't"},
      {"wouldnt've", "wouldn't've"}, {"wouldn'tve", "wouldn't've"}, {"yall", "y'all"}, {"yall'll", "y'all'll"},
      {"y'allll", "y'all'll"}, {"yall'd've", "y'all'd've"}, {"y'alld've", "y'all'd've"},
      {"y'all'dve", "y'all'd've"}, {"youd", "you'd"}, {"youd've", "you'd've"}, {"you'dve", "you'd've"},
      {"youll", "you'll"}, {"youre", "you're"}, {"youve", "you've"}};
  return m;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// "\n" and "\t" to spaces, then strip: what every variant does to raw answers first.
std::string clean(const std::string& s) { return strip(replace_all(replace_all(s, "\n", " "), "\t", " ")); }

bool has_digit_comma_digit(const std::string& s) {
  for (size_t i = 1; i + 1 < s.size(); ++i)
    if (s[i] == ',' && is_digit(s[i - 1]) && is_digit(s[i + 1])) return true;
  return false;
}

// The shared leave-one-out rule: for each record i, min(1, #other records equal to the prediction / 3).
// Records "other than i" are those not equal to record i as a whole (answer and record_key).
double leave_one_out(const std::string& pred, const std::vector<GtAnswer>& gts) {
  if (gts.empty()) return 0.0;
  double sum = 0;
  for (const auto& self : gts) {
    int matches = 0;
    for (const auto& other : gts) {
      const bool same_record = other.answer == self.answer && other.record_key == self.record_key;
      if (!same_record && other.answer == pred) ++matches;
    }
    sum += std::min(1.0, matches / 3.0);
  }
  return sum / static_cast<double>(gts.size());
}

}  // namespace

std::string vqa_process_punctuation(const std::string& text) {
  std::string out = text;
  const bool digit_comma = has_digit_comma_digit(text);
  for (const char* p : kPunct) {
    const std::string ps(p);
    const bool remove = text.find(ps + " ") != std::string::npos || text.find(" " + ps) != std::string::npos ||
                        digit_comma;  // the tests look at the original text, not `out`
    out = replace_all(out, ps, remove ? "" : " ");
  }
  // Periods not followed by a digit, at most 32 of them.
  std::string result;
  int removed = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '.' && removed < 32 && !(i + 1 < out.size() && is_digit(out[i + 1]))) {
      ++removed;
      continue;
    }
    result += out[i];
  }
  return result;
}

std::string vqa_process_digit_article(const std::string& text) {
  const std::string lower = lower_utf8(text);
  std::vector<std::string> words;
  size_t i = 0;
  while (i < lower.size()) {
    while (i < lower.size() && is_space(lower[i])) ++i;
    size_t j = i;
    while (j < lower.size() && !is_space(lower[j])) ++j;
    if (j > i) {
      std::string w = lower.substr(i, j - i);
      if (const auto it = number_words().find(w); it != number_words().end()) w = it->second;
      if (w != "a" && w != "an" && w != "the") words.push_back(std::move(w));
    }
    i = j;
  }
  std::string out;
  for (const auto& w : words) {
    const auto it = contractions().find(w);
    if (!out.empty()) out += ' ';
    out += it == contractions().end() ? w : it->second;
  }
  return out;
}

std::string evalai_process_answer(const std::string& text) {
  std::string s = lower_utf8(text);
  s = replace_all(replace_all(s, ",", ""), "?", "");
  s = strip(replace_all(s, "'s", " 's"));
  s = clean(s);
  return vqa_process_digit_article(vqa_process_punctuation(s));
}

VqaVariant vqa_variant_from_name(const std::string& name) {
  if (name == "vqa") return VqaVariant::Owl2;
  if (name == "vqa_official") return VqaVariant::Official;
  if (name == "textvqa") return VqaVariant::TextVqa;
  throw std::invalid_argument(fmt::format("unknown VQA metric '{}': expected vqa, vqa_official or textvqa", name));
}

const char* vqa_variant_name(VqaVariant v) {
  switch (v) {
    case VqaVariant::Owl2: return "vqa";
    case VqaVariant::Official: return "vqa_official";
    case VqaVariant::TextVqa: return "textvqa";
  }
  return "?";
}

double vqa_question_accuracy(const std::string& prediction, const std::vector<GtAnswer>& answers, VqaVariant v) {
  std::vector<GtAnswer> gts = answers;
  std::string pred;
  auto all_same = [&] {
    return std::all_of(gts.begin(), gts.end(), [&](const GtAnswer& g) { return g.answer == gts[0].answer; });
  };
  switch (v) {
    case VqaVariant::Owl2:
      pred = vqa_process_digit_article(vqa_process_punctuation(clean(prediction)));
      if (!all_same())
        for (auto& g : gts) g.answer = vqa_process_punctuation(g.answer);
      break;
    case VqaVariant::Official:
      for (auto& g : gts) g.answer = clean(g.answer);
      pred = clean(prediction);
      if (!all_same()) {
        for (auto& g : gts) g.answer = vqa_process_digit_article(vqa_process_punctuation(g.answer));
        pred = vqa_process_digit_article(vqa_process_punctuation(pred));
      }
      break;
    case VqaVariant::TextVqa:
      if (gts.size() != 10)
        throw std::invalid_argument(fmt::format("textvqa accuracy needs exactly 10 answers, got {}", gts.size()));
      // The m4c evaluator compares by position, so records never collapse.
      for (size_t i = 0; i < gts.size(); ++i) {
        gts[i].answer = evalai_process_answer(gts[i].answer);
        gts[i].record_key = std::to_string(i);
      }
      pred = evalai_process_answer(prediction);
      break;
  }
  return leave_one_out(pred, gts);
}

VqaReport vqa_accuracy(const std::vector<VqaQuestion>& questions, const std::vector<std::string>& predictions,
                       VqaVariant v) {
  if (questions.size() != predictions.size())
    throw std::invalid_argument(
        fmt::format("{} questions but {} predictions", questions.size(), predictions.size()));
  VqaReport report;
  report.questions = questions.size();
  std::map<std::string, std::pair<double, size_t>> by_answer, by_question;
  double sum = 0;
  for (size_t i = 0; i < questions.size(); ++i) {
    double acc = 0;
    try {
      acc = vqa_question_accuracy(predictions[i], questions[i].answers, v);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("question_id {}: {}", questions[i].question_id, e.what()));
    }
    report.per_question.push_back(acc);
    sum += acc;
    if (!questions[i].answer_type.empty()) {
      by_answer[questions[i].answer_type].first += acc;
      ++by_answer[questions[i].answer_type].second;
    }
    if (!questions[i].question_type.empty()) {
      by_question[questions[i].question_type].first += acc;
      ++by_question[questions[i].question_type].second;
    }
  }
  report.overall = questions.empty() ? 0.0 : 100.0 * sum / static_cast<double>(questions.size());
  for (const auto& [k, p] : by_answer) report.per_answer_type[k] = 100.0 * p.first / static_cast<double>(p.second);
  for (const auto& [k, p] : by_question)
    report.per_question_type[k] = 100.0 * p.first / static_cast<double>(p.second);
  return report;
}

}  // namespace owl2::eval
