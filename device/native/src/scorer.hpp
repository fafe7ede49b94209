// The scorer behind the C ABI: a verified "scorer" artifact (ids in, scores out) and its ExecuTorch method.
#pragma once

#include <mutex>

#include "program.hpp"

namespace lsc4rec {

class Scorer {
 public:
  // Verifies the folder (Program: manifest, size, sha256, program against the manifest), then the golden example.
  Scorer(const std::string& dir, const char* vocab_hash, int threads);

  // Any model: one InputView per program input, checked against the program's planned dtypes and sizes;
  // writes the float32 output into `out` (capacity `out_len`) and returns its element count.
  size_t run(const std::vector<InputView>& inputs, float* out, size_t out_len);

  // The (history int64, candidates int64) -> scores contract of today's SRMs; checks ids and sizes first.
  void score_ids(const int64_t* history, size_t history_len, const int64_t* candidates, size_t num_candidates,
                 float* scores, size_t scores_len);

  const Manifest& manifest() const { return program_.manifest(); }
  size_t max_candidates() const { return max_candidates_; }

 private:
  void check_ids_contract();
  void check_golden();

  Program program_;
  size_t max_candidates_ = 0;
  std::vector<int64_t> padded_history_;
  std::mutex mutex_;
};

}  // namespace lsc4rec
