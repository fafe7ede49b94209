// The user encoder behind the C ABI: a verified "user-encoder" artifact (item vectors in, the user vector out) and
// one user's state, kept here so that an app holds no state logic of its own. The same semantics as
// device/runtime/encoder.py (its docstring describes the three graph shapes).
#pragma once

#include <mutex>

#include "program.hpp"

namespace lsc4rec {

enum class Shape { Recurrent, Cached, Window };

// A cached state re-encodes its window when positions reach this (float32 angles stay precise below it); the same
// as device/runtime/encoder.py's POSITION_LIMIT.
constexpr int64_t kPositionLimit = int64_t(1) << 14;
constexpr size_t kPartitionSize = 2;  // [log Z, log T]

// One user's state. Which fields are used depends on the shape.
struct StateData {
  std::vector<float> state;         // recurrent: (layers, 1, H); window: (1, T, d), the newest vector last
  std::vector<float> keys, values;  // cached: (layers, H, S, d/H), S = T - 1 slots used as a ring
  std::vector<uint8_t> mask;        // cached: (S,), 1 where a slot holds an item (ExecuTorch's bool is one byte)
  size_t slot = 0;                  // cached: the slot the next item's keys and values go to
  int64_t position = 0;             // cached: the next item's position (rotary keys carry it: slot order is free)
  std::vector<float> recent;        // cached: the last T vectors (a ring), to re-encode at kPositionLimit
  size_t recent_count = 0, recent_next = 0;
  std::vector<float> user, partition;
  bool has_user = false;  // false before the first item
};

class Encoder {
 public:
  // Verifies the folder (Program), the graph's shape and sizes, and the golden example (with its own vectors).
  Encoder(const std::string& dir, const char* vocab_hash, int threads);

  StateData initial() const;
  // One event: `vector` holds dim() finite floats (checked by the caller). On failure `state` is unchanged.
  void append(StateData& state, const float* vector);
  // Starts `state` again from `n` vectors (n x dim(), oldest first; the last history_length() are used).
  void rebuild(StateData& state, const float* vectors, size_t n);

  const Manifest& manifest() const { return program_.manifest(); }
  Shape shape() const { return shape_; }
  const char* shape_name() const;
  size_t dim() const { return dim_; }
  size_t history_length() const { return length_; }
  bool has_partition() const { return has_partition_; }

 private:
  void check_shape();
  void check_golden();
  void step(StateData& state, const float* vector);  // one graph call, committed to `state` on success
  void push_recent(StateData& state, const float* vector) const;
  std::vector<OutputView> outputs(std::initializer_list<OutputView> views);

  Program program_;
  Shape shape_ = Shape::Recurrent;
  size_t dim_ = 0, length_ = 0;
  bool has_partition_ = false;
  std::vector<int32_t> state_sizes_, cache_sizes_, new_sizes_;  // recurrent state; cached past and new keys
  size_t slots_ = 0;                                           // cached: S
  std::vector<float> start_;                                   // recurrent: the state after T zero vectors
  // Scratch outputs of one call (under mutex_): copied into a state only when the whole call succeeded.
  std::vector<float> next_state_, new_keys_, new_values_, user_, partition_;
  std::mutex mutex_;
};

}  // namespace lsc4rec
