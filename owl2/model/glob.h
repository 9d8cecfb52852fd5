// Name patterns shared by the freeze rules, the parameter groups and the LoRA targets: a glob over a whole
// dotted name, where '*' matches any run of characters (dots included) and '?' one character.
#pragma once
#include <string>
#include <string_view>

namespace owl2 {

inline bool glob_match(const std::string& p, const std::string& s) {
  size_t pi = 0, si = 0, star = std::string::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi, ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++, mark = si;
    } else if (star != std::string::npos) {
      pi = star + 1, si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

// The same pattern as a regular expression (ECMAScript / Python `re` syntax) that matches a whole name exactly
// when glob_match does, for files read by other tools (PEFT's target_modules).
inline std::string glob_to_regex(const std::string& p) {
  std::string r;
  for (const char c : p) {
    if (c == '*') {
      r += ".*";
    } else if (c == '?') {
      r += '.';
    } else {
      if (std::string_view("\\^$.|+()[]{}").find(c) != std::string_view::npos) r += '\\';
      r += c;
    }
  }
  return r;
}

}  // namespace owl2
