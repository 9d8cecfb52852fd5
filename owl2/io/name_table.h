// Enum <-> name tables: one table per named choice, read both when a name is parsed and when it is printed, so
// the two directions cannot drift apart.
#pragma once
#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace owl2 {

template <class E> struct EnumName {
  E value;
  std::string_view name;
};

template <class E, size_t N> using NameTable = std::array<EnumName<E>, N>;

// The name of `value`; "?" for a value missing from the table (a bug the round-trip tests catch).
template <class E, size_t N> constexpr std::string_view name_of(const NameTable<E, N>& table, E value) {
  for (const auto& e : table) {
    if (e.value == value) return e.name;
  }
  return "?";
}

// The value named `name`, or nullopt.
template <class E, size_t N>
constexpr std::optional<E> find_by_name(const NameTable<E, N>& table, std::string_view name) {
  for (const auto& e : table) {
    if (e.name == name) return e.value;
  }
  return std::nullopt;
}

// Every name in table order, joined by `sep`: "resize|pad|crop".
template <class E, size_t N> std::string joined_names(const NameTable<E, N>& table, std::string_view sep = "|") {
  std::string out;
  for (const auto& e : table) {
    if (!out.empty()) out += sep;
    out += e.name;
  }
  return out;
}

}  // namespace owl2
