// The scorer behind the C ABI: a verified artifact folder (manifest.json + model.pte) and its ExecuTorch method.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
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

struct Golden {
  std::vector<int64_t> history, candidates;
  std::vector<float> scores;
};

// The fields of manifest.json the native runner needs (shared/manifest.py is the full reader).
struct Manifest {
  std::string path;  // of manifest.json, for messages
  std::string version, file_name, sha256, vocab_hash;
  int64_t size_bytes = 0, history_length = 0, num_items = 0;
  std::vector<TensorSpec> inputs, outputs;
  bool has_golden = false;
  Golden golden;
};

// Reads and checks `dir/manifest.json`; throws NativeError(LSC4REC_E_MANIFEST) naming the field.
Manifest read_manifest(const std::string& dir);

// One input as the caller holds it: the method's i-th input, of the dtype and sizes the manifest declares.
struct InputView {
  const void* data;
  ScalarType dtype;
  std::vector<int32_t> sizes;
};

class Scorer {
 public:
  // Verifies the folder (manifest, size, sha256, program against the manifest, golden example) and loads it.
  Scorer(const std::string& dir, const char* vocab_hash, int threads);

  // Any model: one InputView per program input, checked against the program's planned dtypes and sizes;
  // writes the float32 output into `out` (capacity `out_len`) and returns its element count.
  size_t run(const std::vector<InputView>& inputs, float* out, size_t out_len);

  // The (history int64, candidates int64) -> scores contract of today's SRMs; checks ids and sizes first.
  void score_ids(const int64_t* history, size_t history_len, const int64_t* candidates, size_t num_candidates,
                 float* scores, size_t scores_len);

  const Manifest& manifest() const { return manifest_; }
  size_t max_candidates() const { return max_candidates_; }

 private:
  void check_program();
  void check_golden();
  size_t run_locked(const std::vector<InputView>& inputs, float* out, size_t out_len);

  Manifest manifest_;
  std::string model_path_;
  std::vector<uint8_t> program_bytes_;  // the verified bytes: what was hashed is what runs
  std::unique_ptr<executorch::extension::module::Module> module_;
  std::vector<std::vector<int32_t>> planned_sizes_;  // per input: the program's sizes (upper bounds if dynamic)
  size_t max_candidates_ = 0;
  bool serial_ = true;  // threads == 1: no thread pool, inference in the calling thread
  std::vector<int64_t> padded_history_;
  std::mutex mutex_;
};

const char* dtype_name(ScalarType dtype);

}  // namespace lsc4rec
