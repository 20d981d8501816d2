// Named choices: every option that takes one of a few names (--optimizer lars|adamw|sgd, ...) is
// an enum with one table of names, declared next to the enum. The table parses, prints and
// words the error for an unknown name; the CLI builds its choices from it and config.json holds
// the names.
//
//   enum class Fruit { Apple, Pear };
//   template <> const NameTable<Fruit>& name_table<Fruit>();   // in the header
//   template <> const NameTable<Fruit>& name_table<Fruit>() {  // in the source
//     static const NameTable<Fruit> t{"fruit", {{Fruit::Apple, "apple"}, {Fruit::Pear, "pear"}}};
//     return t;
//   }
//   parse_name<Fruit>("pear") == Fruit::Pear;  to_string(Fruit::Apple) == "apple"
#pragma once

#include "vicreg/error.h"

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace vicreg {

template <class E>
struct NameTable {
  std::string what;  ///< what the names name, for messages: "optimizer", "data set", ...
  std::vector<std::pair<E, std::string>> entries;
};

/// The table of an enum; specialised once per enum, next to it.
template <class E>
const NameTable<E>& name_table();

/// The names, in table order.
template <class E>
std::vector<std::string> names_of() {
  std::vector<std::string> out;
  for (const auto& e : name_table<E>().entries) out.push_back(e.second);
  return out;
}

/// "a, b or c".
inline std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  }
  return out;
}

/// The value named `text`. Throws UsageError "unknown WHAT 'text': use one of a, b or c".
template <class E>
E parse_name(const std::string& text) {
  const NameTable<E>& t = name_table<E>();
  for (const auto& [value, name] : t.entries) {
    if (name == text) return value;
  }
  throw UsageError("unknown " + t.what + " '" + text + "': use " + join_names(names_of<E>()));
}

/// The name of `value`.
template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
const std::string& to_string(E value) {
  for (const auto& [v, name] : name_table<E>().entries) {
    if (v == value) return name;
  }
  throw UsageError("no name for value " + std::to_string(static_cast<int>(value)) + " of " +
                   name_table<E>().what);
}

}  // namespace vicreg
