// The scorer: verify an artifact folder before the first inference, then run its ExecuTorch method; and the C ABI.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <openssl/evp.h>

#include <executorch/runtime/platform/platform.h>

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>
#include <executorch/extension/threadpool/threadpool_guard.h>

#include "scorer.hpp"

namespace lsc4rec {

namespace et = executorch::runtime;
using executorch::extension::BufferDataLoader;
using executorch::extension::module::Module;
using executorch::extension::threadpool::NoThreadPoolGuard;

// Absolute, on logits; the same as device/runtime/artifact.py's GOLDEN_TOLERANCE.
constexpr double kGoldenTolerance = 1e-4;

const char* dtype_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    default: return "other";
  }
}

namespace {

// ExecuTorch logs through its platform layer: the runner keeps its own errors to one line, so the runtime's error
// messages are kept (per thread) and added to the error they explain; its info lines are dropped.
thread_local std::string runtime_log;

void keep_runtime_errors(et_timestamp_t, et_pal_log_level_t level, const char*, const char*, size_t,
                         const char* message, size_t length) {
  if (level == kError || level == kFatal) runtime_log.assign(message, strnlen(message, length));
}

void quiet_runtime_logs() {
  static std::once_flag once;
  std::call_once(once, [] { et::register_pal(et::PalImpl::create(keep_runtime_errors, __FILE__)); });
}

std::string hex_error(et::Error error) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%x", static_cast<unsigned>(error));
  std::string out = text;
  if (!runtime_log.empty()) out += ": " + runtime_log;
  runtime_log.clear();
  return out;
}

std::string sha256_hex(const std::vector<uint8_t>& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1)
    throw NativeError(LSC4REC_E_RUNTIME, "sha256: OpenSSL's EVP_Digest failed");
  std::string hex;
  char byte[3];
  for (unsigned int i = 0; i < length; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", digest[i]);
    hex += byte;
  }
  return hex;
}

std::string shape_text(const std::vector<int32_t>& sizes) {
  std::string text = "(";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + (sizes.size() == 1 ? ",)" : ")");
}

}  // namespace

Scorer::Scorer(const std::string& dir, const char* vocab_hash, int threads) : manifest_(read_manifest(dir)) {
  quiet_runtime_logs();
  if (vocab_hash != nullptr && manifest_.vocab_hash != vocab_hash)
    throw NativeError(LSC4REC_E_CATALOG, manifest_.path + ": field 'vocab_hash' = \"" + manifest_.vocab_hash +
                                             "\", this device's catalogue is \"" + vocab_hash + "\"");
  if (threads != 0 && threads != 1)
    throw NativeError(LSC4REC_E_ARGUMENT, "threads = " + std::to_string(threads) +
                                              ": must be 1 (the calling thread) or 0 (ExecuTorch's thread pool)");
  serial_ = threads == 1;
  model_path_ = dir + "/" + manifest_.file_name;

  // Size and sha256 of the bytes that will run (read once: no window between the check and the load).
  std::error_code error;
  const auto size = std::filesystem::file_size(model_path_, error);
  if (error) throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": artifact named by the manifest is missing");
  if (static_cast<int64_t>(size) != manifest_.size_bytes)
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": size " + std::to_string(size) + " bytes, manifest says " +
                                              std::to_string(manifest_.size_bytes));
  program_bytes_.resize(size);
  std::ifstream in(model_path_, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(program_bytes_.data()), static_cast<std::streamsize>(size)))
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": cannot be read");
  const std::string actual = sha256_hex(program_bytes_);
  if (actual != manifest_.sha256)
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": sha256 " + actual + " does not match the manifest's " +
                                              manifest_.sha256);

  std::unique_ptr<NoThreadPoolGuard> guard(serial_ ? new NoThreadPoolGuard() : nullptr);  // XNNPACK reads it at load
  module_ = std::make_unique<Module>(std::make_unique<BufferDataLoader>(program_bytes_.data(), program_bytes_.size()));
  const et::Error loaded = module_->load(et::Program::Verification::InternalConsistency);
  if (loaded != et::Error::Ok)
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": ExecuTorch cannot load the program (error " +
                                              hex_error(loaded) + ")");
  check_program();
  const et::Error method = module_->load_method("forward");
  if (method != et::Error::Ok)
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": ExecuTorch cannot load method 'forward' (error " +
                                              hex_error(method) + ")");
  check_golden();
}

// The program's inputs and output must be the manifest's: count, dtype, rank and every fixed size.
void Scorer::check_program() {
  auto meta = module_->method_meta("forward");
  if (!meta.ok())
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": the program has no method 'forward'");
  if (meta->num_inputs() != manifest_.inputs.size())
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": program has " + std::to_string(meta->num_inputs()) +
                                              " inputs, manifest declares " + std::to_string(manifest_.inputs.size()));
  if (meta->num_outputs() < 1)
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": program has no output");
  auto check = [&](const TensorSpec& spec, auto info, const char* what) -> std::vector<int32_t> {
    if (!info.ok())
      throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": " + what + " '" + spec.name + "' is not a tensor");
    if (info->scalar_type() != spec.dtype)
      throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": " + what + " '" + spec.name + "': program dtype " +
                                                dtype_name(info->scalar_type()) + ", manifest says " +
                                                dtype_name(spec.dtype));
    const auto sizes = info->sizes();
    std::vector<int32_t> planned(sizes.begin(), sizes.end());
    if (planned.size() != spec.shape.size())
      throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": " + what + " '" + spec.name + "': program rank " +
                                                std::to_string(planned.size()) + ", manifest rank " +
                                                std::to_string(spec.shape.size()));
    for (size_t axis = 0; axis < planned.size(); ++axis)
      if (spec.shape[axis] > 0 && spec.shape[axis] != planned[axis])
        throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": " + what + " '" + spec.name + "' axis " +
                                                  std::to_string(axis) + ": program size " +
                                                  std::to_string(planned[axis]) + ", manifest says " +
                                                  std::to_string(spec.shape[axis]));
    return planned;
  };
  planned_sizes_.clear();
  for (size_t i = 0; i < manifest_.inputs.size(); ++i)
    planned_sizes_.push_back(check(manifest_.inputs[i], meta->input_tensor_meta(i), "input"));
  check(manifest_.outputs[0], meta->output_tensor_meta(0), "output");
  // Today's contract: (history (1, T) int64, candidates (1, C <= bound) int64). Another model kind (float item
  // vectors) declares other inputs and calls `run` directly.
  const bool ids = planned_sizes_.size() == 2 && manifest_.inputs[0].dtype == ScalarType::Long &&
                   manifest_.inputs[1].dtype == ScalarType::Long && planned_sizes_[0].size() == 2 &&
                   planned_sizes_[1].size() == 2;
  if (ids) {
    if (planned_sizes_[0][1] != manifest_.history_length)
      throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": history input " + shape_text(planned_sizes_[0]) +
                                                " does not end in history_length " +
                                                std::to_string(manifest_.history_length));
    max_candidates_ = static_cast<size_t>(planned_sizes_[1][1]);
    padded_history_.assign(static_cast<size_t>(manifest_.history_length), 0);
  }
}

void Scorer::check_golden() {
  std::vector<float> got;
  if (!manifest_.has_golden) {  // still prove the method runs and has the declared output: score item 1 twice
    if (max_candidates_ == 0) return;
    std::vector<int64_t> history(padded_history_.size(), 0), candidates{1, std::min<int64_t>(2, manifest_.num_items)};
    got.resize(2);
    score_ids(history.data(), history.size(), candidates.data(), 2, got.data(), got.size());
    return;
  }
  const Golden& golden = manifest_.golden;
  got.resize(golden.scores.size());
  try {
    score_ids(golden.history.data(), golden.history.size(), golden.candidates.data(), golden.candidates.size(),
              got.data(), got.size());
  } catch (const NativeError& error) {
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": the golden example cannot be scored (" + error.what() + ")");
  }
  double gap = 0;
  for (size_t i = 0; i < got.size(); ++i) gap = std::max(gap, std::fabs(double(got[i]) - double(golden.scores[i])));
  if (!(gap <= kGoldenTolerance)) {
    char text[64];
    std::snprintf(text, sizeof text, "%.3g (tolerance %g)", gap, kGoldenTolerance);
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": scores differ from the manifest's golden example by " +
                                              text + "; the artifact is not the one that was exported");
  }
}

size_t Scorer::run(const std::vector<InputView>& inputs, float* out, size_t out_len) {
  std::lock_guard<std::mutex> lock(mutex_);
  return run_locked(inputs, out, out_len);
}

size_t Scorer::run_locked(const std::vector<InputView>& inputs, float* out, size_t out_len) {
  if (inputs.size() != planned_sizes_.size())
    throw NativeError(LSC4REC_E_ARGUMENT, "inputs: " + std::to_string(inputs.size()) + " given, the program takes " +
                                              std::to_string(planned_sizes_.size()));
  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<et::EValue> values;
  tensors.reserve(inputs.size());
  values.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const InputView& view = inputs[i];
    const TensorSpec& spec = manifest_.inputs[i];
    const std::vector<int32_t>& bound = planned_sizes_[i];
    if (view.data == nullptr) throw NativeError(LSC4REC_E_ARGUMENT, spec.name + ": NULL buffer");
    if (view.dtype != spec.dtype)
      throw NativeError(LSC4REC_E_ARGUMENT, spec.name + ": dtype " + dtype_name(view.dtype) + ", the program takes " +
                                                dtype_name(spec.dtype));
    bool fits = view.sizes.size() == bound.size();
    for (size_t axis = 0; fits && axis < bound.size(); ++axis)
      fits = view.sizes[axis] >= 1 &&
             (spec.shape[axis] > 0 ? view.sizes[axis] == bound[axis] : view.sizes[axis] <= bound[axis]);
    if (!fits)
      throw NativeError(LSC4REC_E_ARGUMENT, spec.name + ": shape " + shape_text(view.sizes) +
                                                ", the program takes at most " + shape_text(bound));
    // The runtime copies the caller's data into its planned input memory; nothing writes through this pointer.
    tensors.push_back(executorch::extension::from_blob(const_cast<void*>(view.data), view.sizes, view.dtype));
    values.emplace_back(*tensors.back());
  }
  std::unique_ptr<NoThreadPoolGuard> guard(serial_ ? new NoThreadPoolGuard() : nullptr);
  auto result = module_->execute("forward", values);
  if (!result.ok())
    throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": ExecuTorch failed (error " + hex_error(result.error()) + ")");
  if (result->empty() || !(*result)[0].isTensor())
    throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": the program's first output is not a tensor");
  const auto& output = (*result)[0].toTensor();
  if (output.scalar_type() != ScalarType::Float)
    throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": output dtype " + dtype_name(output.scalar_type()));
  const size_t count = static_cast<size_t>(output.numel());
  if (count > out_len)
    throw NativeError(LSC4REC_E_ARGUMENT, "scores: room for " + std::to_string(out_len) + ", the output has " +
                                              std::to_string(count));
  const float* data = output.const_data_ptr<float>();
  size_t bad = 0;
  for (size_t i = 0; i < count; ++i) bad += !std::isfinite(data[i]);
  if (bad)  // e.g. a re-signed model whose broken weight the golden input does not reach
    throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": non-finite scores for " + std::to_string(bad) + " of " +
                                             std::to_string(count) + " outputs");
  std::memcpy(out, data, count * sizeof(float));
  return count;
}

void Scorer::score_ids(const int64_t* history, size_t history_len, const int64_t* candidates, size_t num_candidates,
                       float* scores, size_t scores_len) {
  if (max_candidates_ == 0)
    throw NativeError(LSC4REC_E_ARGUMENT, model_path_ + ": the program does not take (history, candidates) ids");
  const size_t length = padded_history_.size();
  const int64_t n = manifest_.num_items;
  if (history == nullptr && history_len > 0) throw NativeError(LSC4REC_E_ARGUMENT, "history: NULL buffer");
  if (candidates == nullptr) throw NativeError(LSC4REC_E_ARGUMENT, "candidates: NULL buffer");
  if (scores == nullptr) throw NativeError(LSC4REC_E_ARGUMENT, "scores: NULL buffer");
  if (history_len > length)
    throw NativeError(LSC4REC_E_ARGUMENT, "history: " + std::to_string(history_len) +
                                              " ids, the model takes at most " + std::to_string(length));
  if (num_candidates < 1 || num_candidates > max_candidates_)
    throw NativeError(LSC4REC_E_ARGUMENT, "candidates: " + std::to_string(num_candidates) +
                                              " ids, the program takes 1.." + std::to_string(max_candidates_));
  if (scores_len < num_candidates)
    throw NativeError(LSC4REC_E_ARGUMENT, "scores: room for " + std::to_string(scores_len) + ", " +
                                              std::to_string(num_candidates) + " candidates");
  for (size_t i = 0; i < history_len; ++i)
    if (history[i] < 0 || history[i] > n)
      throw NativeError(LSC4REC_E_UNKNOWN_ITEM, "history[" + std::to_string(i) + "] = " + std::to_string(history[i]) +
                                                    ": not an item id (catalogue is 1.." + std::to_string(n) + ")");
  for (size_t i = 0; i < num_candidates; ++i)
    if (candidates[i] < 1 || candidates[i] > n)
      throw NativeError(LSC4REC_E_UNKNOWN_ITEM, "candidates[" + std::to_string(i) + "] = " +
                                                    std::to_string(candidates[i]) + ": not an item id (catalogue is 1.." +
                                                    std::to_string(n) + ")");
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t* hist = history;
  if (history_len < length) {  // left-pad with 0 (padding), the newest item last
    std::fill(padded_history_.begin(), padded_history_.end(), 0);
    if (history_len) std::copy(history, history + history_len, padded_history_.end() - history_len);
    hist = padded_history_.data();
  }
  std::vector<InputView> inputs{{hist, ScalarType::Long, {1, static_cast<int32_t>(length)}},
                                {candidates, ScalarType::Long, {1, static_cast<int32_t>(num_candidates)}}};
  run_locked(inputs, scores, scores_len);
}

}  // namespace lsc4rec

// ---------------------------------------------------------------------------------------------------- the C ABI

struct lsc4rec_scorer {
  std::unique_ptr<lsc4rec::Scorer> impl;
};

namespace {

thread_local std::string last_error;

template <typename Fn>
lsc4rec_status guarded(Fn&& fn) {
  try {
    fn();
    last_error.clear();
    return LSC4REC_OK;
  } catch (const lsc4rec::NativeError& error) {
    last_error = error.what();
    return error.status;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return LSC4REC_E_RUNTIME;
  } catch (const std::exception& error) {
    last_error = std::string("unexpected error: ") + error.what();
    return LSC4REC_E_RUNTIME;
  }
}

}  // namespace

extern "C" {

int lsc4rec_abi_version(void) { return LSC4REC_ABI_VERSION; }

const char* lsc4rec_last_error(void) { return last_error.c_str(); }

lsc4rec_status lsc4rec_scorer_open(const char* model_dir, const char* vocab_hash, int threads,
                                   lsc4rec_scorer** out) {
  if (out == nullptr) {
    last_error = "out: NULL pointer";
    return LSC4REC_E_ARGUMENT;
  }
  *out = nullptr;
  if (model_dir == nullptr) {
    last_error = "model_dir: NULL pointer";
    return LSC4REC_E_ARGUMENT;
  }
  return guarded([&] { *out = new lsc4rec_scorer{std::make_unique<lsc4rec::Scorer>(model_dir, vocab_hash, threads)}; });
}

lsc4rec_status lsc4rec_scorer_score(lsc4rec_scorer* scorer, const int64_t* history, size_t history_len,
                                    const int64_t* candidates, size_t num_candidates, float* scores,
                                    size_t scores_len) {
  if (scorer == nullptr) {
    last_error = "scorer: NULL pointer";
    return LSC4REC_E_ARGUMENT;
  }
  return guarded([&] { scorer->impl->score_ids(history, history_len, candidates, num_candidates, scores, scores_len); });
}

size_t lsc4rec_scorer_history_length(const lsc4rec_scorer* scorer) {
  return scorer ? static_cast<size_t>(scorer->impl->manifest().history_length) : 0;
}

int64_t lsc4rec_scorer_num_items(const lsc4rec_scorer* scorer) {
  return scorer ? scorer->impl->manifest().num_items : 0;
}

size_t lsc4rec_scorer_max_candidates(const lsc4rec_scorer* scorer) { return scorer ? scorer->impl->max_candidates() : 0; }

const char* lsc4rec_scorer_version(const lsc4rec_scorer* scorer) {
  return scorer ? scorer->impl->manifest().version.c_str() : "";
}

void lsc4rec_scorer_close(lsc4rec_scorer* scorer) { delete scorer; }

}  // extern "C"
