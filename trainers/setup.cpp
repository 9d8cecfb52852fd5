// Building a training run's model, policies and data from its config; see setup.h.
#include "trainers/setup.h"

#include <fmt/format.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <ostream>
#include <set>

#include "data/dataset.h"
#include "data/stream.h"
#include "owl2/io/weights.h"
#include "owl2/model/init.h"
#include "trainers/activation_checkpoint.h"
#include "trainers/sharding.h"

namespace owl2 {
namespace {

std::shared_ptr<const data::Dataset> open_sources(const DataConfig& d, uint64_t seed) {
  if (d.sources.empty()) throw ConfigError("data.sources: a training run needs at least one data source");
  data::ReadOptions ro;
  ro.max_bad_fraction = d.max_bad_fraction;
  ro.video_frames = d.video_frames;
  ro.video_layout = d.video_layout;
  std::vector<data::MixtureSource> mix;
  size_t total = 0;
  for (const auto& s : d.sources) {
    mix.push_back({data::open_dataset(s.path, ro), s.weight});
    total += mix.back().dataset->size();
  }
  if (mix.size() == 1) return mix[0].dataset;
  return data::make_mixture(mix, total, seed);
}

// Hands the heap's free pages back to the system. glibc serves allocations below its (adaptive) mmap threshold
// from the heap and keeps what is freed there resident; a streamed start-up frees one parameter (and one read
// buffer) after another, which would otherwise add up to a good part of the model.
void release_free_heap_pages() {
#ifdef __GLIBC__
  ::malloc_trim(0);
#endif
}

}  // namespace

MPLUGOwl2ForCausalLM build_model(const RunConfig& cfg, const ModelBuild& how) {
  MPLUGOwl2ForCausalLM model(cfg.model);  // registers the parameters, uninitialised
  if (!how.defer_values) write_initial_values(model, cfg, how, nullptr, nullptr);
  model->to(how.device);
  model->train();
  return model;
}

void write_initial_values(MPLUGOwl2ForCausalLM& model, const RunConfig& cfg, const ModelBuild& how,
                          const std::vector<torch::Tensor>* only, const std::function<void(torch::Tensor&)>& written) {
  // The documented init (owl2/model/init.h), once, unless init.from provides every tensor next.
  const bool loads = how.load_init && !cfg.init.from.empty();
  if (written && loads && cfg.init.allow_missing)
    throw std::logic_error("write_initial_values: init.allow_missing writes parameters twice, none can be taken early");
  std::set<const c10::TensorImpl*> wanted;
  if (only)
    for (const auto& t : *only) wanted.insert(t.unsafeGetTensorImpl());
  const auto skip = [&](const torch::Tensor& t) { return only && !wanted.count(t.unsafeGetTensorImpl()); };
  if (!loads || cfg.init.allow_missing) {
    InitHooks hooks;
    if (only) hooks.skip = skip;
    hooks.written = written;
    init_weights(model, static_cast<uint64_t>(cfg.train.seed), cfg.model.initializer_range, hooks);
  }
  if (loads) {
    LoadOptions lo;
    lo.allow_missing = cfg.init.allow_missing;
    if (written) {
      lo.loaded = [&](const std::string&, torch::Tensor& t) { written(t); };
      lo.unmapped = true;
    }
    if (only) {
      std::set<std::string> left;
      for (const auto& item : model->named_parameters())
        if (skip(item.value())) left.insert(item.key());
      lo.skip = [left](const std::string& name) { return left.count(name) > 0; };
    }
    const auto summary = load_model_weights(model, cfg.init.from, lo);
    if (how.log) *how.log << "init: " << cfg.init.from << ": " << summary << "\n";
  }
}

TrainingModel build_training(const RunConfig& cfg, const ModelBuild& how, std::shared_ptr<Comm> comm) {
  TrainingModel out;
  const bool stage3 = cfg.distributed.zero_stage == 3;
  const bool loads = how.load_init && !cfg.init.from.empty();
  const bool stream = stage3 && !(loads && cfg.init.allow_missing);
  ModelBuild build = how;
  if (stage3) build.device = torch::kCPU;
  build.defer_values = stream;
  out.model = build_model(cfg, build);
  ShardPlacement placement;
  if (stream) placement.pending = out.model->parameters();  // the LoRA adapters added next are written already
  const std::vector<torch::Tensor> placement_pending = placement.pending;
  out.policies = apply_training_policies(out.model, cfg);
  for (const auto& item : out.model->named_parameters()) out.sizes.emplace_back(item.key(), item.value().numel());
  if (stage3) placement.device = how.device;
  out.trainer = std::make_unique<Trainer>(*out.model, model_loss_sum(out.model), cfg, std::move(comm),
                                          out.policies.sharded_stacks, std::move(placement));
  if (stream) {
    Trainer& trainer = *out.trainer;
    write_initial_values(out.model, cfg, how, &placement_pending, [&trainer](torch::Tensor& t) {
      trainer.absorb(t);
      release_free_heap_pages();
    });
    trainer.finish_absorbing();
  }
  return out;
}

TrainingPolicies apply_training_policies(MPLUGOwl2ForCausalLM& model, const RunConfig& cfg) {
  TrainingPolicies policies;
  if (cfg.lora.rank > 0) {
    try {
      policies.lora_saved_modules = lora_modules_to_save(*model, cfg.lora);
      policies.lora_modules = add_lora(*model, cfg.lora, static_cast<uint64_t>(cfg.train.seed) + kLoraSeedOffset);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(e.what());
    }
  }
  const auto& ac = cfg.train.activation_checkpointing;
  if (ac.vision) model->model->vision_model->block_runner = checkpointing_runner();
  if (ac.abstractor) model->model->visual_abstractor->block_runner = checkpointing_runner();
  if (ac.decoder) model->decoder_block_runner = checkpointing_runner();

  // ZeRO 3 shards the stacks of kZero3Stacks (trainers/sharding.h, shared with the planner): the ViT, abstractor and
  // decoder layers.
  if (cfg.distributed.zero_stage == 3) {
    auto& m = *model->model;
    for (const auto& stack : kZero3Stacks) {
      const std::string_view name(stack.name);
      ShardedStack s{stack.name, {}, nullptr};
      torch::nn::ModuleList layers{nullptr};
      if (name == "vision") {
        s.runner = &m.vision_model->block_runner;
        layers = m.vision_model->encoder->layers;
      } else if (name == "abstractor") {
        s.runner = &m.visual_abstractor->block_runner;
        layers = m.visual_abstractor->encoder->layers;
      } else if (name == "decoder") {
        s.runner = &model->decoder_block_runner;
        layers = m.layers;
      } else {
        throw std::logic_error(std::string("ZeRO 3: no blocks known for the stack '") + stack.name + "'");
      }
      for (size_t i = 0; i < layers->size(); ++i) s.blocks.push_back(layers->ptr(i));
      policies.sharded_stacks.push_back(s);
    }
  }
  return policies;
}

LossSumFn model_loss_sum(MPLUGOwl2ForCausalLM model) {
  return [impl = model.ptr()](const Batch& b) {
    ModelInputs in{b.input_ids, b.attention_mask, b.images, b.labels};
    in.segment_ids = b.segment_ids;
    if (!b.vision_placeholder) return impl->forward(in).loss_sum;
    // ZeRO 3 with the vision stacks sharded, a text-only micro-batch while another rank's has images: the vision
    // tower and abstractor run on a blank image so that this rank joins their per-block collectives, in the same
    // order (before the decoder in forward, after it in backward, as the images of the other ranks run). Times
    // zero, the output adds nothing to the loss and zeros to the gradients.
    const int64_t size = impl->cfg.vision.image_size;
    const auto& w = impl->lm_head->weight;  // float32 pixels, as the loader makes them; float64 for a float64 model
    const auto blank = torch::zeros({1, 3, size, size}, torch::TensorOptions()
                                                            .device(w.device())
                                                            .dtype(w.scalar_type() == torch::kDouble ? torch::kDouble
                                                                                                     : torch::kFloat));
    const at::Tensor nothing = impl->encode_images(blank).sum() * 0.0;
    return impl->forward(in).loss_sum + nothing;
  };
}

std::shared_ptr<const Tokenizer> load_tokenizer(const RunConfig& cfg) {
  if (cfg.data.tokenizer.empty()) throw ConfigError("data.tokenizer: a training run needs a SentencePiece model");
  auto tokenizer = std::make_shared<const Tokenizer>(cfg.data.tokenizer);
  if (tokenizer->vocab_size() > cfg.model.decoder.vocab_size) {
    throw ConfigError(fmt::format("data.tokenizer {} has {} tokens, more than model.decoder.vocab_size {}",
                                  cfg.data.tokenizer, tokenizer->vocab_size(), cfg.model.decoder.vocab_size));
  }
  return tokenizer;
}

ExampleLoader make_loader(const RunConfig& cfg, const DistEnv& env, std::shared_ptr<const Tokenizer> tokenizer) {
  const auto& t = cfg.train;
  ExampleOptions eo;
  eo.image.size = cfg.model.vision.image_size;
  eo.image.mode = cfg.data.image_mode;
  eo.augment = cfg.data.augment;
  eo.seed = static_cast<uint64_t>(t.seed);
  eo.chat_template = cfg.data.chat_template;
  auto builder = std::make_shared<ExampleBuilder>(std::move(tokenizer), eo);
  data::LoaderOptions lo;
  lo.batch_size = static_cast<size_t>(t.micro_batch_size);
  lo.seed = static_cast<uint64_t>(t.seed);
  lo.rank = static_cast<int>(env.rank);
  lo.world_size = static_cast<int>(env.world_size);
  lo.num_workers = static_cast<int>(cfg.data.num_workers);
  lo.group_by_modality = cfg.data.group_by_modality;
  lo.max_length = t.max_length;
  lo.length_policy = cfg.data.length_policy;
  lo.pack_tokens = cfg.data.pack_tokens;
  lo.pack_buffer = static_cast<size_t>(cfg.data.pack_buffer);
  const int64_t vis = cfg.model.visual_tokens_per_image();
  ExampleLoader::LengthHooks hooks;
  hooks.length = [vis](const Example& e) { return spliced_length(e, vis); };
  hooks.truncate = [vis](Example& e, int64_t max) { truncate_example(e, max, vis); };
  const auto transform = [builder](data::RawSample&& s) { return (*builder)(std::move(s)); };
  const auto collate_fn = [](std::vector<Example>&& ex) { return collate(std::move(ex)); };
  if (cfg.data.streaming) {
    const std::string& path = cfg.data.sources.at(0).path;
    const auto ends = [&](const char* s) { return path.ends_with(s); };
    if (ends(".jsonl") || (ends(".json") && !data::is_shard_list(path)))
      throw ConfigError(fmt::format("data.streaming: {} is not tar shards (a folder, .tar, brace pattern or JSON shard "
                                    "list); JSONL and LLaVA JSON are indexed, set data.streaming: false",
                                    path));
    data::ReadOptions ro;
    ro.max_bad_fraction = cfg.data.max_bad_fraction;
    auto stream = std::make_shared<data::ShardStream>(path, ro, static_cast<uint64_t>(t.seed), lo.rank, lo.world_size);
    return ExampleLoader(stream, lo, transform, collate_fn, hooks);
  }
  auto dataset = open_sources(cfg.data, static_cast<uint64_t>(t.seed));
  if (lo.pack_tokens > 0) {
    hooks.planned_length = [builder, dataset, vis](size_t i) { return builder->spliced_tokens(dataset->text(i), vis); };
    hooks.packed_collate = [](std::vector<Example>&& ex, const std::vector<size_t>& row_of) {
      return collate_packed(std::move(ex), row_of);
    };
  }
  return ExampleLoader(dataset, lo, transform, collate_fn, hooks);
}

}  // namespace owl2
