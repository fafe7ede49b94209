// A verified artifact folder and its ExecuTorch method: the checks every artifact passes before its first inference.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <openssl/evp.h>

#include <executorch/runtime/platform/platform.h>

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>
#include <executorch/extension/threadpool/threadpool_guard.h>

#include "program.hpp"

namespace lsc4rec {

namespace et = executorch::runtime;
using executorch::extension::BufferDataLoader;
using executorch::extension::module::Module;
using executorch::extension::threadpool::NoThreadPoolGuard;

std::string& last_error() {
  thread_local std::string message;
  return message;
}

const char* dtype_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::Bool: return "bool";
    default: return "other";
  }
}

std::string shape_text(const std::vector<int32_t>& sizes) {
  std::string text = "(";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + (sizes.size() == 1 ? ",)" : ")");
}

size_t element_count(const std::vector<int32_t>& sizes) {
  size_t count = 1;
  for (int32_t size : sizes) count *= static_cast<size_t>(size);
  return count;
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

}  // namespace

Program::Program(const std::string& dir, const char* vocab_hash, int threads, const std::string& kind)
    : manifest_(read_manifest(dir, kind)) {
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
}

// The program's inputs and outputs must be the manifest's: count, dtype, rank and every fixed size.
void Program::check_program() {
  auto meta = module_->method_meta("forward");
  if (!meta.ok())
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": the program has no method 'forward'");
  if (meta->num_inputs() != manifest_.inputs.size())
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": program has " + std::to_string(meta->num_inputs()) +
                                              " inputs, manifest declares " + std::to_string(manifest_.inputs.size()));
  if (meta->num_outputs() != manifest_.outputs.size())
    throw NativeError(LSC4REC_E_MANIFEST, model_path_ + ": program has " + std::to_string(meta->num_outputs()) +
                                              " outputs, manifest declares " +
                                              std::to_string(manifest_.outputs.size()));
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
  input_sizes_.clear();
  output_sizes_.clear();
  for (size_t i = 0; i < manifest_.inputs.size(); ++i)
    input_sizes_.push_back(check(manifest_.inputs[i], meta->input_tensor_meta(i), "input"));
  for (size_t i = 0; i < manifest_.outputs.size(); ++i)
    output_sizes_.push_back(check(manifest_.outputs[i], meta->output_tensor_meta(i), "output"));
}

std::vector<size_t> Program::run(const std::vector<InputView>& inputs, const std::vector<OutputView>& outputs) {
  if (inputs.size() != input_sizes_.size())
    throw NativeError(LSC4REC_E_ARGUMENT, "inputs: " + std::to_string(inputs.size()) + " given, the program takes " +
                                              std::to_string(input_sizes_.size()));
  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<et::EValue> values;
  tensors.reserve(inputs.size());
  values.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const InputView& view = inputs[i];
    const TensorSpec& spec = manifest_.inputs[i];
    const std::vector<int32_t>& bound = input_sizes_[i];
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
  if (result->size() < outputs.size())
    throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": the program gave " + std::to_string(result->size()) +
                                             " outputs, " + std::to_string(outputs.size()) + " expected");
  std::vector<size_t> counts(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {  // every output is checked before any is written
    const std::string& name = manifest_.outputs[i].name;
    if (!(*result)[i].isTensor())
      throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": output '" + name + "' is not a tensor");
    const auto& output = (*result)[i].toTensor();
    if (output.scalar_type() != ScalarType::Float)
      throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": output '" + name + "' dtype " +
                                               dtype_name(output.scalar_type()));
    counts[i] = static_cast<size_t>(output.numel());
    if (counts[i] > outputs[i].room)
      throw NativeError(LSC4REC_E_ARGUMENT, name + ": room for " + std::to_string(outputs[i].room) +
                                                ", the output has " + std::to_string(counts[i]));
    const float* data = output.const_data_ptr<float>();
    size_t bad = 0;
    for (size_t j = 0; j < counts[i]; ++j) bad += !std::isfinite(data[j]);
    if (bad)  // e.g. a re-signed model whose broken weight the golden input does not reach
      throw NativeError(LSC4REC_E_RUNTIME, model_path_ + ": non-finite values in output '" + name + "' (" +
                                               std::to_string(bad) + " of " + std::to_string(counts[i]) + ")");
  }
  for (size_t i = 0; i < outputs.size(); ++i)
    std::memcpy(outputs[i].data, (*result)[i].toTensor().const_data_ptr<float>(), counts[i] * sizeof(float));
  return counts;
}

}  // namespace lsc4rec
