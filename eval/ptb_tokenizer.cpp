// A reimplementation of the Stanford PTBTokenizer 3.4.1 rules that captions exercise (see ptb_tokenizer.h).
// Each whitespace-separated chunk is lexed by peeling leading and trailing punctuation, then splitting clitics,
// a few fused words and the remaining punctuation inside. The abbreviation tables were established by running
// the reference tokenizer on every entry (see scripts/make_eval_golden.py and docs/eval.md).
#include "eval/ptb_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <string_view>

namespace owl2::eval {
namespace {

using std::string_view;

// What follows a chunk: the period rules of the lexer look one character ahead.
enum class Next { End, SentenceStart, Digit, Other };

bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || is_upper(c); }
bool is_alnum_or_utf8(char c) { return is_alpha(c) || is_digit(c) || static_cast<unsigned char>(c) >= 0x80; }

std::string ascii_lower(string_view s) {
  std::string out(s);
  for (char& c : out)
    if (is_upper(c)) c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool starts_with(string_view s, string_view p) { return s.size() >= p.size() && s.substr(0, p.size()) == p; }
bool ends_with(string_view s, string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Kept with their period before end of line, a lower-case word or punctuation (and before a capital: the
// lexer then adds a separate "." that coco-caption drops anyway, so the word keeps its period).
const std::set<std::string, std::less<>>& abbreviations() {
  static const std::set<std::string, std::less<>> s = {
      "adm",   "al",    "ala",   "apr",   "ariz",  "assn", "aug",     "ave",  "bancorp", "bhd",   "blvd", "brig",
      "bros",  "calif", "capt",  "cf",    "cmdr",  "co",   "col",     "colo", "comdr",   "conn",  "corp", "cos",
      "dec",   "dept",  "det",   "dr",    "drs",   "ed.d", "esq",     "est",  "etc",     "ext",   "feb",  "fla",
      "fri",   "ft",    "ga",    "gen",   "gov",   "govs", "hon",     "inc",  "ind",     "intl",  "jan",  "jr",
      "jul",   "jun",   "kan",   "kans",  "ky",    "lieut", "lt",     "ltd",  "maj",     "mar",   "md",   "messrs",
      "mich",  "minn",  "mo",    "mon",   "mont",  "mr",   "mrs",     "ms",   "mt",      "neb",   "nev",  "nov",
      "oct",   "okla",  "penn",  "pfc",   "ph.d",  "plc",  "pres",    "prof", "profs",   "pty",   "ptys", "pvt",
      "rd",    "rep",   "reps",  "rev",   "sen",   "sens", "sep",     "sept", "sgt",     "spc",   "sq",   "sr",
      "st",    "ste",   "supt",  "supts", "sys",   "tel",  "tenn",    "thu",  "tue",     "univ",  "va",   "vs",
      "vt",    "wed",   "wis",   "wyo"};
  return s;
}

// Kept with their period only before a number ("no. 5", "fig. 2").
const std::set<std::string, std::less<>>& number_abbreviations() {
  static const std::set<std::string, std::less<>> s = {"art", "ca", "fig", "figs", "no", "nos", "op", "pp"};
  return s;
}

// Capitalized words after which the lexer ends a sentence at "X." (a single letter with a period); found by
// probing the reference tokenizer ("b. Smith" keeps "b.", "b. The" splits it). The lexer's own list may be longer.
bool starts_sentence(string_view w) {
  static const std::set<std::string, std::less<>> words = {"The",  "A",  "An",   "He",   "She", "It",  "They",
                                                           "We",   "There", "In", "This", "That", "What", "But",
                                                           "If",   "When", "Her", "Our",  "You",  "Some"};
  size_t n = 0;
  while (n < w.size() && is_alpha(w[n])) ++n;
  return words.count(w.substr(0, n)) > 0;
}

// Single letters separated by periods: u.s, e.g, p.m, n.y.c (the trailing period is not included).
bool is_acronym(string_view core) {
  if (core.size() < 3 || core.size() % 2 == 0) return false;
  for (size_t i = 0; i < core.size(); ++i)
    if (i % 2 == 0 ? !is_alpha(core[i]) : core[i] != '.') return false;
  return true;
}

// Whether a trailing period stays on `core` (the chunk without that period).
bool keeps_period(string_view core, Next next) {
  if (core.size() == 1 && is_alpha(core[0])) return next != Next::SentenceStart;  // "J. Smith", "b . The"
  if (is_acronym(core)) return true;
  const std::string lower = ascii_lower(core);
  if (abbreviations().count(lower)) return true;
  return next == Next::Digit && number_abbreviations().count(lower) > 0;
}

// Words that a leading apostrophe belongs to (otherwise the apostrophe is an opening quote).
bool apostrophe_word(string_view s) {
  size_t n = 1;
  while (n < s.size() && (is_alnum_or_utf8(s[n]) || s[n] == '\'')) ++n;
  const std::string w = ascii_lower(s.substr(0, n));
  static const std::set<std::string, std::less<>> words = {"'s",    "'re", "'ve",  "'ll",   "'d", "'m",
                                                           "'em",   "'n'", "'tis", "'twas", "'cause"};
  if (words.count(w)) return true;
  // '90s, '60s
  size_t d = 1;
  while (d < w.size() && is_digit(w[d])) ++d;
  return d > 1 && (d == w.size() || (d + 1 == w.size() && w[d] == 's'));
}

const char* bracket_token(char c) {
  switch (c) {
    case '(': return "-LRB-";
    case ')': return "-RRB-";
    case '[': return "-LSB-";
    case ']': return "-RSB-";
    case '{': return "-LCB-";
    case '}': return "-RCB-";
    default: return nullptr;
  }
}

bool one_char_symbol(char c) { return std::string_view("=*~^|\\%&<>;,:").find(c) != string_view::npos; }

// <tag> and </tag>, which the lexer keeps whole.
size_t sgml_length(string_view s) {
  if (s.size() < 3 || s[0] != '<' || !(is_alpha(s[1]) || s[1] == '/' || s[1] == '!')) return 0;
  const size_t close = s.find('>');
  if (close == string_view::npos || s.substr(1, close - 1).find('<') != string_view::npos) return 0;
  return close + 1;
}

// Words the lexer splits in two: "cannot" -> "can not", "gonna" -> "gon na", ...
size_t fused_split(const std::string& lower) {
  static const std::pair<const char*, size_t> fused[] = {{"cannot", 3}, {"gonna", 3}, {"gotta", 3}, {"lemme", 3},
                                                         {"gimme", 3},  {"wanna", 3}, {"'tis", 2},  {"'twas", 2}};
  for (const auto& [w, at] : fused)
    if (lower == w) return at;
  return 0;
}

void lex(string_view s, Next next, std::vector<std::string>& out);

// The interior of a chunk, after leading and trailing punctuation are gone.
void lex_core(string_view core, Next next, std::vector<std::string>& out) {
  if (core.empty()) return;
  const std::string lower = ascii_lower(core);
  if (lower.find("://") != std::string::npos || starts_with(lower, "www.")) {  // URLs stay whole
    out.emplace_back(core);
    return;
  }
  if (const size_t at = fused_split(lower)) {
    out.emplace_back(core.substr(0, at));
    out.emplace_back(core.substr(at));
    return;
  }
  // Clitics: n't, 's 'm 'd, 're 've 'll.
  size_t clitic = 0;
  if (lower.size() > 3 && ends_with(lower, "n't")) {
    clitic = 3;
  } else if (lower.size() > 2 && (ends_with(lower, "'s") || ends_with(lower, "'m") || ends_with(lower, "'d"))) {
    clitic = 2;
  } else if (lower.size() > 3 && (ends_with(lower, "'re") || ends_with(lower, "'ve") || ends_with(lower, "'ll"))) {
    clitic = 3;
  }
  if (clitic) {
    lex(core.substr(0, core.size() - clitic), Next::Other, out);
    out.emplace_back(core.substr(core.size() - clitic));
    return;
  }
  if (lower.size() > 2 && starts_with(lower, "y'") && is_alpha(lower[2])) {  // y'all, y'know
    out.emplace_back(core.substr(0, 2));
    lex(core.substr(2), next, out);
    return;
  }
  // Punctuation inside the word: split before it and lex the rest (which then starts with it).
  for (size_t i = 1; i + 1 < core.size(); ++i) {
    const char c = core[i];
    const bool digits_around = is_digit(core[i - 1]) && is_digit(core[i + 1]);
    bool split = false;
    if (c == ',' || c == ':') {
      split = !digits_around;
    } else if (c == '&') {
      split = !(is_upper(core[i - 1]) && is_upper(core[i + 1]));
    } else if (c == '-') {
      split = core[i + 1] == '-';
    } else if (c == '.') {
      split = core[i + 1] == '.';
    } else if (c == '\'') {
      split = lower.compare(i, 3, "'n'") == 0;
    } else {
      split = string_view(";=*~^|\\%$!\"`<>()[]{}").find(c) != string_view::npos;
    }
    if (split) {
      lex(core.substr(0, i), Next::Other, out);
      if (c == '\'') {  // rock'n'roll -> rock 'n' roll
        out.emplace_back(core.substr(i, 3));
        lex(core.substr(i + 3), next, out);
      } else {
        lex(core.substr(i), next, out);
      }
      return;
    }
  }
  out.emplace_back(core);
}

void lex(string_view s, Next next, std::vector<std::string>& out) {
  // Leading punctuation.
  while (!s.empty()) {
    const char c = s[0];
    if (starts_with(s, "``")) {
      out.emplace_back("``");
      s.remove_prefix(2);
    } else if (starts_with(s, "''")) {
      out.emplace_back("''");
      s.remove_prefix(2);
    } else if (c == '"') {
      out.emplace_back("``");
      s.remove_prefix(1);
    } else if (const char* b = bracket_token(c)) {
      out.emplace_back(b);
      s.remove_prefix(1);
    } else if (starts_with(s, "--") || starts_with(s, "...")) {
      const size_t n = s[0] == '-' ? 2 : 3;
      out.emplace_back(s.substr(0, n));
      s.remove_prefix(n);
    } else if (c == '`') {
      out.emplace_back("`");
      s.remove_prefix(1);
    } else if (c == '\'') {
      if (s.size() > 1 && apostrophe_word(s)) break;
      out.emplace_back("`");
      s.remove_prefix(1);
    } else if (c == '!' || c == '?') {
      size_t n = 0;
      while (n < s.size() && (s[n] == '!' || s[n] == '?')) ++n;
      out.emplace_back(s.substr(0, n));
      s.remove_prefix(n);
    } else if (c == '-') {
      if (s.size() > 1 && (is_digit(s[1]) || (s[1] == '.' && s.size() > 2 && is_digit(s[2])))) break;  // -5
      out.emplace_back("-");
      s.remove_prefix(1);
    } else if (c == '$' || (c == '#' && s.size() > 1 && is_digit(s[1]))) {
      out.emplace_back(s.substr(0, 1));
      s.remove_prefix(1);
    } else if (const size_t tag = sgml_length(s)) {
      out.emplace_back(s.substr(0, tag));
      s.remove_prefix(tag);
    } else if (one_char_symbol(c)) {
      out.emplace_back(s.substr(0, 1));
      s.remove_prefix(1);
    } else {
      break;
    }
  }
  // Trailing punctuation, collected from the end.
  std::vector<std::string> tail;
  while (!s.empty()) {
    const char c = s.back();
    size_t n = 1;
    std::string token;
    if (ends_with(s, "''")) {
      n = 2;
      token = "''";
    } else if (c == '"') {
      token = "''";
    } else if (const char* b = bracket_token(c); b && (c == ')' || c == ']' || c == '}')) {
      token = b;
    } else if (ends_with(s, "...") || ends_with(s, "--")) {
      n = c == '.' ? 3 : 2;
      token = std::string(s.substr(s.size() - n));
    } else if (c == '!' || c == '?') {
      while (n < s.size() && (s[s.size() - 1 - n] == '!' || s[s.size() - 1 - n] == '?')) ++n;
      token = std::string(s.substr(s.size() - n));
    } else if (c == '\'' || c == '-' || c == '`' || one_char_symbol(c)) {
      token = std::string(1, c);
    } else if (c == '.') {
      const string_view core = s.substr(0, s.size() - 1);
      const bool double_period = !core.empty() && core.back() == '.';
      if (!core.empty() && !double_period && keeps_period(core, tail.empty() ? next : Next::Other)) break;
      token = ".";
    } else {
      break;
    }
    tail.push_back(std::move(token));
    s.remove_suffix(n);
  }
  lex_core(s, tail.empty() ? next : Next::Other, out);
  for (auto it = tail.rbegin(); it != tail.rend(); ++it) out.push_back(std::move(*it));
}

// Replaces the non-ASCII punctuation that captions contain by its ASCII form, as the lexer normalizes it.
std::string normalize(const std::string& text) {
  static const std::pair<const char*, const char*> table[] = {
      {"\u00A0", " "},   {"\u00BC", "1/4"}, {"\u00BD", "1/2"},     {"\u00BE", "3/4"},
      {"\u2018", "'"},   {"\u2019", "'"},   {"\u201C", " `` "},    {"\u201D", " '' "},
      {"\u2013", " -- "}, {"\u2014", " -- "}, {"\u2026", " ... "}, {"&amp;", "&"},
      {"&lt;", "<"},     {"&gt;", ">"},     {"&quot;", "\""}};
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    if (lead >= 0x20 && lead < 0x7F && lead != '&') {  // the common case: plain ASCII, nothing to map
      out += text[i++];
      continue;
    }
    bool replaced = false;
    for (const auto& [from, to] : table) {
      const size_t n = std::char_traits<char>::length(from);
      if (text.compare(i, n, from) == 0) {
        out += to;
        i += n;
        replaced = true;
        break;
      }
    }
    if (replaced) continue;
    const unsigned char c = static_cast<unsigned char>(text[i]);
    out += (c < 0x20 || c == 0x7F) ? ' ' : text[i];
    ++i;
  }
  return out;
}

}  // namespace

std::string lower_utf8(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      out += is_upper(static_cast<char>(c)) ? static_cast<char>(c - 'A' + 'a') : static_cast<char>(c);
      continue;
    }
    // Two-byte sequences: decode, map the Latin-1 and Latin Extended-A capitals, re-encode.
    if ((c & 0xE0) == 0xC0 && i + 1 < text.size()) {
      unsigned cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3Fu);
      if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) {
        cp += 0x20;
      } else if (cp >= 0x100 && cp <= 0x17F && cp != 0x130 && cp != 0x131 && cp != 0x138 && cp != 0x149 && cp != 0x178 &&
                 cp != 0x17F) {
        // Pairs are (even capital, odd small) except in 0x139..0x148 and 0x179..0x17E, where they are shifted.
        const bool shifted = (cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E);
        if (shifted ? (cp % 2 == 1) : (cp % 2 == 0)) cp += 1;
      }
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
      ++i;
      continue;
    }
    out += text[i];
  }
  return out;
}

namespace {

std::vector<string_view> split_chunks(const std::string& text) {
  std::vector<string_view> chunks;
  const string_view all(text);
  for (size_t i = 0; i < all.size();) {
    while (i < all.size() && all[i] == ' ') ++i;
    size_t j = i;
    while (j < all.size() && all[j] != ' ') ++j;
    if (j > i) chunks.push_back(all.substr(i, j - i));
    i = j;
  }
  return chunks;
}

Next classify(string_view w) {
  return starts_sentence(w) ? Next::SentenceStart : is_digit(w[0]) ? Next::Digit : Next::Other;
}

// `after`: the text that follows the line in the batch (the lexer looks past the line break).
std::vector<std::string> tokens_with_lookahead(const std::string& line, const std::string* after) {
  const std::string text = normalize(line);
  const auto chunks = split_chunks(text);
  Next last = Next::End;
  std::string after_text;
  if (after) {
    after_text = normalize(*after);
    const auto next_chunks = split_chunks(after_text);
    if (!next_chunks.empty()) {
      // A sentence starter needs a following word; at the very end of the input it does not count.
      last = classify(next_chunks[0]);
      if (last == Next::SentenceStart && next_chunks.size() == 1) last = Next::Other;
    }
  }
  std::vector<std::string> tokens;
  for (size_t k = 0; k < chunks.size(); ++k) lex(chunks[k], k + 1 < chunks.size() ? classify(chunks[k + 1]) : last, tokens);
  for (auto& t : tokens) t = lower_utf8(t);
  return tokens;
}

std::string drop_punctuation(const std::vector<std::string>& tokens) {
  static const std::set<std::string, std::less<>> dropped = {"''",    "'",     "``", "`", "-LRB-", "-RRB-",
                                                             "-LCB-", "-RCB-", ".",  "?", "!",     ",",
                                                             ":",     "-",     "--", "...", ";"};
  std::string out;
  for (const auto& t : tokens) {
    if (dropped.count(t)) continue;
    if (!out.empty()) out += ' ';
    out += t;
  }
  return out;
}

}  // namespace

std::vector<std::string> ptb_tokens(const std::string& line) { return tokens_with_lookahead(line, nullptr); }

std::string coco_tokenize(const std::string& caption) { return drop_punctuation(ptb_tokens(caption)); }

std::vector<std::string> coco_tokenize_batch(const std::vector<std::string>& captions) {
  std::vector<std::string> out;
  out.reserve(captions.size());
  for (size_t i = 0; i < captions.size(); ++i) {
    // The next non-blank caption is what the lexer sees after this line's break.
    const std::string* after = nullptr;
    for (size_t j = i + 1; j < captions.size() && !after; ++j)
      if (captions[j].find_first_not_of(" \t\r\n") != std::string::npos) after = &captions[j];
    out.push_back(drop_punctuation(tokens_with_lookahead(captions[i], after)));
  }
  return out;
}

}  // namespace owl2::eval
