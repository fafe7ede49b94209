// The scorer: verify a "scorer" artifact folder before the first inference, then score ids; and its C ABI.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "scorer.hpp"

namespace lsc4rec {

// Absolute, on logits; the same as device/runtime/artifact.py's GOLDEN_TOLERANCE.
constexpr double kGoldenTolerance = 1e-4;

Scorer::Scorer(const std::string& dir, const char* vocab_hash, int threads)
    : program_(dir, vocab_hash, threads, kScorerKind) {
  check_ids_contract();
  check_golden();
}

// Today's contract: (history (1, T) int64, candidates (1, C <= bound) int64). A program with other inputs is
// still loaded; it is called through `run`.
void Scorer::check_ids_contract() {
  const Manifest& m = program_.manifest();
  const auto& sizes = program_.input_sizes();
  const bool ids = sizes.size() == 2 && m.inputs[0].dtype == ScalarType::Long &&
                   m.inputs[1].dtype == ScalarType::Long && sizes[0].size() == 2 && sizes[1].size() == 2;
  if (!ids) return;
  if (sizes[0][1] != m.history_length)
    throw NativeError(LSC4REC_E_MANIFEST, program_.path() + ": history input " + shape_text(sizes[0]) +
                                              " does not end in history_length " + std::to_string(m.history_length));
  max_candidates_ = static_cast<size_t>(sizes[1][1]);
  padded_history_.assign(static_cast<size_t>(m.history_length), 0);
}

void Scorer::check_golden() {
  const Manifest& m = program_.manifest();
  std::vector<float> got;
  if (!m.has_golden) {  // still prove the method runs and has the declared output: score item 1 twice
    if (max_candidates_ == 0) return;
    std::vector<int64_t> history(padded_history_.size(), 0), candidates{1, std::min<int64_t>(2, m.num_items)};
    got.resize(2);
    score_ids(history.data(), history.size(), candidates.data(), 2, got.data(), got.size());
    return;
  }
  const Golden& golden = m.golden;
  got.resize(golden.scores.size());
  try {
    score_ids(golden.history.data(), golden.history.size(), golden.candidates.data(), golden.candidates.size(),
              got.data(), got.size());
  } catch (const NativeError& error) {
    throw NativeError(LSC4REC_E_MANIFEST,
                      program_.path() + ": the golden example cannot be scored (" + error.what() + ")");
  }
  double gap = 0;
  for (size_t i = 0; i < got.size(); ++i) gap = std::max(gap, std::fabs(double(got[i]) - double(golden.scores[i])));
  if (!(gap <= kGoldenTolerance)) {
    char text[64];
    std::snprintf(text, sizeof text, "%.3g (tolerance %g)", gap, kGoldenTolerance);
    throw NativeError(LSC4REC_E_MANIFEST, program_.path() + ": scores differ from the manifest's golden example by " +
                                              text + "; the artifact is not the one that was exported");
  }
}

size_t Scorer::run(const std::vector<InputView>& inputs, float* out, size_t out_len) {
  std::lock_guard<std::mutex> lock(mutex_);
  return program_.run(inputs, {{out, out_len}})[0];
}

void Scorer::score_ids(const int64_t* history, size_t history_len, const int64_t* candidates, size_t num_candidates,
                       float* scores, size_t scores_len) {
  if (max_candidates_ == 0)
    throw NativeError(LSC4REC_E_ARGUMENT, program_.path() + ": the program does not take (history, candidates) ids");
  const size_t length = padded_history_.size();
  const int64_t n = program_.manifest().num_items;
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
  program_.run(inputs, {{scores, scores_len}});
}

}  // namespace lsc4rec

// ---------------------------------------------------------------------------------------------------- the C ABI

struct lsc4rec_scorer {
  std::unique_ptr<lsc4rec::Scorer> impl;
};

using lsc4rec::guarded;
using lsc4rec::refuse;

extern "C" {

int lsc4rec_abi_version(void) { return LSC4REC_ABI_VERSION; }

const char* lsc4rec_last_error(void) { return lsc4rec::last_error().c_str(); }

lsc4rec_status lsc4rec_scorer_open(const char* model_dir, const char* vocab_hash, int threads,
                                   lsc4rec_scorer** out) {
  if (out == nullptr) return refuse(LSC4REC_E_ARGUMENT, "out: NULL pointer");
  *out = nullptr;
  if (model_dir == nullptr) return refuse(LSC4REC_E_ARGUMENT, "model_dir: NULL pointer");
  return guarded([&] { *out = new lsc4rec_scorer{std::make_unique<lsc4rec::Scorer>(model_dir, vocab_hash, threads)}; });
}

lsc4rec_status lsc4rec_scorer_score(lsc4rec_scorer* scorer, const int64_t* history, size_t history_len,
                                    const int64_t* candidates, size_t num_candidates, float* scores,
                                    size_t scores_len) {
  if (scorer == nullptr) return refuse(LSC4REC_E_ARGUMENT, "scorer: NULL pointer");
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
