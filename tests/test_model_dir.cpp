// Model folders (trainers/io/model_dir.h): the tokenizer is found relative to the folder wherever it is moved,
// nothing outside the folder is read unless allowed, and every refusal names the file, the key and the fix.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "owl2/io/state_dict.h"
#include "tests/helpers.h"
#include "trainers/config.h"
#include "trainers/io/model_dir.h"

// The whole file in its own namespace: unity batches compile several test files as one translation unit.
namespace owl2_test_model_dir {

using Catch::Matchers::Contains;
using owl2::test::read_text;
using owl2::test::source_path;
using owl2::test::temp_dir;
namespace fs = std::filesystem;

namespace {

const std::string kTokenizer = "tests/fixtures/tokenizer/tiny_llama.model";

// A loadable folder: the tiny model (vocabulary widened to the fixture tokenizer's 1000 pieces), random weights,
// the tokenizer copied in and named relatively, as owl2 writes one.
std::string write_folder(const std::string& dir) {
  fs::create_directories(dir);
  owl2::RunConfig cfg = owl2::load_config(source_path("configs/model/tiny.yaml"), {"model.decoder.vocab_size=1000"});
  cfg.data.tokenizer = owl2::copy_tokenizer_into(source_path(kTokenizer), dir);
  std::ofstream(dir + "/config.yaml") << owl2::to_yaml(cfg);
  owl2::MPLUGOwl2ForCausalLM model(cfg.model);
  owl2::save_state_dict(*model, dir);
  return dir;
}

// Rewrites the folder's data.tokenizer line.
void set_tokenizer(const std::string& dir, const std::string& value) {
  std::string yaml = read_text(dir + "/config.yaml");
  const std::string key = "tokenizer: tokenizer.model";
  const auto at = yaml.find(key);
  REQUIRE(at != std::string::npos);
  yaml.replace(at, key.size(), "tokenizer: " + value);
  std::ofstream(dir + "/config.yaml") << yaml;
}

}  // namespace

TEST_CASE("copy_tokenizer_into copies the bytes and names the copy relatively", "[model_dir]") {
  const auto dir = temp_dir("owl2_md_copy");
  CHECK(owl2::copy_tokenizer_into(source_path(kTokenizer), dir) == "tokenizer.model");
  CHECK(read_text(dir + "/tokenizer.model") == read_text(source_path(kTokenizer)));
  // Copying the folder's own tokenizer onto itself changes nothing.
  CHECK(owl2::copy_tokenizer_into(dir + "/tokenizer.model", dir) == "tokenizer.model");
  CHECK(read_text(dir + "/tokenizer.model") == read_text(source_path(kTokenizer)));
  CHECK_THROWS_WITH(owl2::copy_tokenizer_into(dir + "/none.model", dir),
                    Contains(dir + "/none.model: no such tokenizer file"));
}

TEST_CASE("a moved model folder loads its own tokenizer, whatever the working directory", "[model_dir]") {
  const auto root = temp_dir("owl2_md_move");
  write_folder(root + "/a");
  CHECK_THAT(read_text(root + "/a/config.yaml"), Contains("tokenizer: tokenizer.model"));
  fs::rename(root + "/a", root + "/b");
  const auto l = owl2::load_model_dir(root + "/b");
  CHECK(l.cfg.data.tokenizer == root + "/b/tokenizer.model");
  CHECK(l.tokenizer->vocab_size() == 1000);
  // The path is the folder's, not the working directory's: a relative folder path works from anywhere.
  struct InDir {
    fs::path back = fs::current_path();
    explicit InDir(const fs::path& p) { fs::current_path(p); }
    ~InDir() { fs::current_path(back); }
  };
  InDir in_root(root);
  CHECK(owl2::load_model_dir("b").cfg.data.tokenizer == "b/tokenizer.model");
}

TEST_CASE("a folder whose tokenizer lies outside it is refused by file and key, unless allowed", "[model_dir]") {
  const auto root = temp_dir("owl2_md_outside");
  const auto dir = write_folder(root + "/m");
  const auto outside = source_path(kTokenizer);

  // An absolute path elsewhere, as older owl2 versions wrote: refused with both fixes, the folder's own copy named.
  set_tokenizer(dir, outside);
  CHECK_THROWS_WITH(owl2::load_model_dir(dir),
                    Contains(dir + "/config.yaml: data.tokenizer '" + outside + "' is outside the model folder " + dir) &&
                        Contains("The folder has its own tokenizer.model: set data.tokenizer: tokenizer.model in " +
                                 dir + "/config.yaml") &&
                        Contains("--allow-external-tokenizer"));
  owl2::ModelDirOptions allow;
  allow.allow_external_tokenizer = true;
  CHECK(owl2::load_model_dir(dir, allow).cfg.data.tokenizer == outside);
  // --tokenizer FILE is the caller's explicit choice.
  owl2::ModelDirOptions given;
  given.tokenizer = outside;
  CHECK(owl2::load_model_dir(dir, given).cfg.data.tokenizer == outside);

  // Without its own copy the message says what to copy where.
  fs::remove(dir + "/tokenizer.model");
  CHECK_THROWS_WITH(owl2::load_model_dir(dir),
                    Contains("To fix the folder: cp " + outside + " " + dir + "/tokenizer.model"));
  // "../" leaves the folder too, and so does a link inside it that points out.
  fs::copy_file(outside, root + "/tok.model");
  CHECK_THROWS_WITH(owl2::model_dir_tokenizer(dir, "../tok.model", false), Contains("is outside the model folder"));
  CHECK(owl2::model_dir_tokenizer(dir, "../tok.model", true) == root + "/tok.model");
  fs::create_symlink(root + "/tok.model", dir + "/tokenizer.model");
  CHECK_THROWS_WITH(owl2::model_dir_tokenizer(dir, "tokenizer.model", false), Contains("is outside the model folder"));
}

TEST_CASE("a missing or empty data.tokenizer names the config, the key and the fix", "[model_dir]") {
  const auto dir = temp_dir("owl2_md_missing");
  // A relative path of an older folder (read from the working directory then) is looked for in the folder.
  CHECK_THROWS_WITH(owl2::model_dir_tokenizer(dir, "runs/demo/tokenizer.model", false),
                    Contains(dir + "/config.yaml: data.tokenizer 'runs/demo/tokenizer.model': no such file (looked "
                                   "for " + dir + "/runs/demo/tokenizer.model") &&
                        Contains("older owl2 versions read it from the working directory") &&
                        Contains("set data.tokenizer: tokenizer.model") && Contains("--tokenizer FILE"));
  CHECK_THROWS_WITH(owl2::model_dir_tokenizer(dir, "", false),
                    Contains(dir + "/config.yaml: data.tokenizer is empty"));
}

TEST_CASE("a model folder's config.yaml may include files inside the folder only", "[model_dir]") {
  const auto root = temp_dir("owl2_md_include");
  const auto dir = root + "/m";
  fs::create_directories(dir + "/parts");
  std::ofstream(dir + "/parts/model.yaml") << read_text(source_path("configs/model/tiny.yaml"));
  std::ofstream(dir + "/config.yaml") << "include: parts/model.yaml\n";
  CHECK(owl2::read_model_dir_config(dir).model.decoder.hidden_size == 128);  // tiny.yaml's
  std::ofstream(dir + "/config.yaml") << "# a hand-made folder\ninclude: " << source_path("configs/model/tiny.yaml")
                                      << "\n";
  CHECK_THROWS_WITH(owl2::read_model_dir_config(dir),
                    Contains(dir + "/config.yaml:2: include '" + source_path("configs/model/tiny.yaml") +
                             "' is outside the model folder " + dir) &&
                        Contains("owl2 config show " + dir + "/config.yaml > resolved.yaml"));
  // An inside file that reaches out is refused as well.
  std::ofstream(dir + "/parts/model.yaml") << "include: ../../outside.yaml\n";
  std::ofstream(dir + "/config.yaml") << "include: [parts/model.yaml]\n";
  CHECK_THROWS_WITH(owl2::read_model_dir_config(dir), Contains(dir + "/parts/model.yaml:1: include '../../outside.yaml'"));
  CHECK_THROWS_WITH(owl2::read_model_dir_config(root), Contains(root + ": not a model directory"));
  // A training checkpoint names the command that makes a model folder of it.
  fs::create_directories(root + "/step-000000004");
  std::ofstream(root + "/step-000000004/state.json") << "{}";
  CHECK_THROWS_WITH(owl2::read_model_dir_config(root + "/step-000000004"),
                    Contains("a training checkpoint, not a model directory") &&
                        Contains("owl2 checkpoint consolidate --from " + root + "/step-000000004 --to DIR"));
}

}  // namespace owl2_test_model_dir
