// Subcommand groups register themselves here (one cli/cmd_*.cpp per area); main() adds them to the app.
// An add function declares its options and sets `run` in the callback of the subcommand it defines.
#pragma once
#include <functional>
#include <vector>

namespace CLI {
class App;
}

namespace owl2::cli {

using Action = std::function<int()>;
using AddCommands = void (*)(CLI::App& app, Action& run);

inline std::vector<AddCommands>& command_groups() {
  static std::vector<AddCommands> groups;
  return groups;
}

inline bool register_commands(AddCommands add) {
  command_groups().push_back(add);
  return true;
}

}  // namespace owl2::cli

// In a cli/cmd_*.cpp file: OWL2_REGISTER_COMMANDS(add_config_commands);
#define OWL2_REGISTER_COMMANDS(fn) \
  static const bool owl2_registered_##fn [[maybe_unused]] = ::owl2::cli::register_commands(fn)
