// `owl2 inspect --config FILE`: the model's module tree with parameter counts, computed from the config alone
// (owl2::parameter_shapes), so even the 8.2B model is inspected without allocating a weight.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <map>
#include <set>

#include "cli/commands.h"
#include "owl2/model/model.h"
#include "trainers/config.h"

namespace owl2::cli {
namespace {

std::string with_commas(int64_t n) {
  auto s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

// A tree over dotted names; numeric segments (layer indices) are folded into one "N" node that remembers
// how many distinct indices it stands for.
struct Node {
  int64_t params = 0;
  std::set<std::string> indices;
  std::map<std::string, Node> children;
  std::vector<std::string> order;
};

void insert(Node& root, const std::string& name, int64_t n) {
  Node* node = &root;
  node->params += n;
  size_t start = 0;
  while (start <= name.size()) {
    const size_t dot = name.find('.', start);
    std::string seg = name.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool index = !seg.empty() && seg.find_first_not_of("0123456789") == std::string::npos;
    const std::string key = index ? "N" : seg;
    if (!node->children.count(key)) node->order.push_back(key);
    Node& child = node->children[key];
    if (index) child.indices.insert(seg);
    child.params += n;
    node = &child;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
}

void print(const Node& node, const std::string& path, int depth, int max_depth) {
  for (const auto& key : node.order) {
    const Node& child = node.children.at(key);
    if (child.children.empty()) continue;  // a tensor, not a module
    const std::string name = path.empty() ? key : path + "." + key;
    std::string count = with_commas(child.params);
    if (!child.indices.empty()) {
      const auto k = static_cast<int64_t>(child.indices.size());
      count = fmt::format("{} ({} x {})", count, k, with_commas(child.params / k));
    }
    std::cout << fmt::format("{:<{}}{:<{}} {:>30}\n", "", 2 * depth, name, 64 - 2 * depth, count);
    if (depth + 1 < max_depth) print(child, name, depth + 1, max_depth);
  }
}

void add_model_commands(CLI::App& app, Action& run) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    int depth = 3;
  };
  auto args = std::make_shared<Args>();
  auto* inspect = app.add_subcommand("inspect", "Print the model tree with parameter counts (no weights allocated)");
  inspect->add_option("--config", args->config, "YAML run or model config")->required();
  inspect->add_option("--set", args->sets, "Override a key: --set model.decoder.num_hidden_layers=2 (repeatable)");
  inspect->add_option("--depth", args->depth, "Levels of the module tree to print (default 3)");
  inspect->callback([&run, args] {
    run = [args] {
      const auto cfg = load_config(args->config, args->sets);
      Node root;
      for (const auto& p : parameter_shapes(cfg.model)) insert(root, p.name, p.numel());
      std::cout << fmt::format("{:<64} {:>30}\n", "module", "parameters");
      print(root, "", 0, args->depth);
      std::cout << fmt::format("{:<64} {:>30}\n", "total", with_commas(root.params));
      return 0;
    };
  });
}

}  // namespace

OWL2_REGISTER_COMMANDS(add_model_commands);

}  // namespace owl2::cli
