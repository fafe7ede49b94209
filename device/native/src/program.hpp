// What the scorer and the user encoder share: a verified artifact folder (manifest.json + a .pte) and its ExecuTorch
// method, the errors the library raises on purpose, and the C ABI's error handling.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>

#include "lsc4rec_native.h"

namespace lsc4rec {

using executorch::aten::ScalarType;

// An error the library raises on purpose: a status code and one line naming file, field and value.
struct NativeError : std::runtime_error {
  lsc4rec_status status;
  NativeError(lsc4rec_status code, const std::string& message) : std::runtime_error(message), status(code) {}
};

// One tensor of the manifest: name, dtype and shape (a dimension < 0 is dynamic: its name is a string there).
struct TensorSpec {
  std::string name;
  ScalarType dtype;
  std::vector<int64_t> shape;
};

// The manifest's example and what the artifact gave for it. A user encoder's carries its vectors: one row of
// vector_dim floats per history item (non-padding), then per candidate.
struct Golden {
  std::vector<int64_t> history, candidates;
  std::vector<float> scores, vectors;
};

constexpr const char* kScorerKind = "scorer";
constexpr const char* kEncoderKind = "user-encoder";

// The fields of manifest.json the native runner needs (shared/manifest.py is the full reader).
struct Manifest {
  std::string path;  // of manifest.json, for messages
  std::string kind, version, file_name, sha256, vocab_hash;
  int64_t size_bytes = 0, history_length = 0, num_items = 0, vector_dim = 0;
  std::vector<TensorSpec> inputs, outputs;
  bool has_golden = false;
  Golden golden;
};

// Reads and checks `dir/manifest.json` for an artifact of `kind` (kScorerKind or kEncoderKind); throws
// NativeError(LSC4REC_E_MANIFEST) naming the field.
Manifest read_manifest(const std::string& dir, const std::string& kind);

// One input as the caller holds it: the method's i-th input, of the dtype and sizes the manifest declares.
struct InputView {
  const void* data;
  ScalarType dtype;
  std::vector<int32_t> sizes;
};

// Where one float32 output goes: `room` floats at `data`.
struct OutputView {
  float* data;
  size_t room;
};

// A verified artifact and its loaded method "forward". Not thread-safe: its owner serialises calls to `run`.
class Program {
 public:
  // Verifies the folder (manifest of `kind`, vocab hash, size, sha256, program's inputs and outputs against the
  // manifest) and loads the method. threads: 1 runs in the calling thread, 0 in ExecuTorch's thread pool.
  Program(const std::string& dir, const char* vocab_hash, int threads, const std::string& kind);

  // One call: inputs checked against the planned dtypes and sizes; outputs[i] receives output i (float32, all
  // finite, else nothing is written). Returns the element count of every output copied.
  std::vector<size_t> run(const std::vector<InputView>& inputs, const std::vector<OutputView>& outputs);

  const Manifest& manifest() const { return manifest_; }
  const std::string& path() const { return model_path_; }  // of the .pte, for messages
  // Per input / output: the program's sizes (upper bounds where the manifest names a dynamic dimension).
  const std::vector<std::vector<int32_t>>& input_sizes() const { return input_sizes_; }
  const std::vector<std::vector<int32_t>>& output_sizes() const { return output_sizes_; }

 private:
  void check_program();

  Manifest manifest_;
  std::string model_path_;
  std::vector<uint8_t> program_bytes_;  // the verified bytes: what was hashed is what runs
  std::unique_ptr<executorch::extension::module::Module> module_;
  std::vector<std::vector<int32_t>> input_sizes_, output_sizes_;
  bool serial_ = true;  // threads == 1: no thread pool, inference in the calling thread
};

const char* dtype_name(ScalarType dtype);
std::string shape_text(const std::vector<int32_t>& sizes);
size_t element_count(const std::vector<int32_t>& sizes);

// ------------------------------------------------------------------------------------------- the C ABI's side

// This thread's last error (what lsc4rec_last_error returns).
std::string& last_error();

// Sets this thread's last error and returns `status` (for checks made before `guarded`).
inline lsc4rec_status refuse(lsc4rec_status status, const std::string& message) {
  last_error() = message;
  return status;
}

// Runs `fn`, turning what it throws into a status and this thread's last error (cleared on success).
template <typename Fn>
lsc4rec_status guarded(Fn&& fn) {
  try {
    fn();
    last_error().clear();
    return LSC4REC_OK;
  } catch (const NativeError& error) {
    return refuse(error.status, error.what());
  } catch (const std::bad_alloc&) {
    return refuse(LSC4REC_E_RUNTIME, "out of memory");
  } catch (const std::exception& error) {
    return refuse(LSC4REC_E_RUNTIME, std::string("unexpected error: ") + error.what());
  }
}

}  // namespace lsc4rec
