// The user encoder: verify a "user-encoder" artifact before the first inference, keep one user's state per
// lsc4rec_user_state and update it by one graph call per event; and its C ABI.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "encoder.hpp"

namespace lsc4rec {

// Absolute, on scores (user . vector); the same as device/runtime/artifact.py's GOLDEN_TOLERANCE.
constexpr double kGoldenTolerance = 1e-4;
constexpr const char* kPartitionOutput = "log_partition";  // device/runtime/encoder.py's PARTITION_OUTPUT

namespace {

// The graph shapes, told by the input names (device/runtime/encoder.py's SHAPES).
const std::vector<std::pair<std::vector<std::string>, Shape>> kShapes = {
    {{"state", "item_vector"}, Shape::Recurrent},
    {{"item_vector", "position", "past_keys", "past_values", "past_mask"}, Shape::Cached},
    {{"history_vectors"}, Shape::Window}};

}  // namespace

Encoder::Encoder(const std::string& dir, const char* vocab_hash, int threads)
    : program_(dir, vocab_hash, threads, kEncoderKind) {
  check_shape();
  if (shape_ == Shape::Recurrent) {  // the state after a full window of padding (zero vectors), as training begins
    StateData state;
    state.state.assign(element_count(state_sizes_), 0.0f);
    const std::vector<float> zero(dim_, 0.0f);
    try {
      for (size_t i = 0; i < length_; ++i) step(state, zero.data());
    } catch (const NativeError& error) {
      throw NativeError(LSC4REC_E_MANIFEST, program_.path() + ": the start state cannot be computed (" +
                                                error.what() + ")");
    }
    start_ = state.state;
  }
  check_golden();
}

const char* Encoder::shape_name() const {
  switch (shape_) {
    case Shape::Recurrent: return "recurrent";
    case Shape::Cached: return "cached";
    default: return "window";
  }
}

// The inputs name a shape; its tensors have the dtypes and sizes that shape needs (d = vector_dim, T =
// history_length), and the last output may be the partition head's [log Z, log T].
void Encoder::check_shape() {
  const Manifest& m = program_.manifest();
  std::vector<std::string> names;
  for (const TensorSpec& spec : m.inputs) names.push_back(spec.name);
  auto found = std::find_if(kShapes.begin(), kShapes.end(), [&](const auto& entry) { return entry.first == names; });
  if (found == kShapes.end()) {
    std::string text;
    for (const auto& name : names) text += (text.empty() ? "" : ", ") + name;
    throw NativeError(LSC4REC_E_MANIFEST, m.path + ": inputs (" + text + ") are none of the user-encoder shapes "
                                              "(state, item_vector), (item_vector, position, past_keys, past_values, "
                                              "past_mask), (history_vectors)");
  }
  shape_ = found->second;
  dim_ = static_cast<size_t>(m.vector_dim);
  length_ = static_cast<size_t>(m.history_length);
  has_partition_ = m.outputs.back().name == kPartitionOutput;

  const auto d = static_cast<int32_t>(dim_), t = static_cast<int32_t>(length_);
  auto expect = [&](bool input, size_t i, ScalarType dtype, const std::vector<int32_t>& sizes) {
    const TensorSpec& spec = input ? m.inputs[i] : m.outputs[i];
    const auto& planned = input ? program_.input_sizes()[i] : program_.output_sizes()[i];
    if (spec.dtype != dtype || (!sizes.empty() && planned != sizes))
      throw NativeError(LSC4REC_E_MANIFEST, program_.path() + ": " + (input ? "input '" : "output '") + spec.name +
                                                "' is " + dtype_name(spec.dtype) + " " + shape_text(planned) + ", a " +
                                                shape_name() + " user encoder needs " + dtype_name(dtype) + " " +
                                                (sizes.empty() ? std::string("of any shape") : shape_text(sizes)));
  };
  const size_t outputs = (shape_ == Shape::Recurrent ? 2 : shape_ == Shape::Cached ? 3 : 1) + has_partition_;
  if (m.outputs.size() != outputs)
    throw NativeError(LSC4REC_E_MANIFEST, program_.path() + ": " + std::to_string(m.outputs.size()) + " outputs, a " +
                                              shape_name() + " user encoder has " + std::to_string(outputs));
  if (has_partition_) expect(false, outputs - 1, ScalarType::Float, {1, static_cast<int32_t>(kPartitionSize)});
  if (shape_ == Shape::Recurrent) {
    state_sizes_ = program_.input_sizes()[0];
    expect(true, 0, ScalarType::Float, {});
    expect(true, 1, ScalarType::Float, {1, d});
    expect(false, 0, ScalarType::Float, state_sizes_);
    expect(false, 1, ScalarType::Float, {1, d});
    next_state_.resize(element_count(state_sizes_));
  } else if (shape_ == Shape::Cached) {
    cache_sizes_ = program_.input_sizes()[2];
    if (cache_sizes_.size() != 4 || cache_sizes_[2] < 1)
      throw NativeError(LSC4REC_E_MANIFEST, program_.path() + ": input 'past_keys' is " + shape_text(cache_sizes_) +
                                                ", not (layers, heads, slots >= 1, head size)");
    slots_ = static_cast<size_t>(cache_sizes_[2]);
    new_sizes_ = {cache_sizes_[0], cache_sizes_[1], 1, cache_sizes_[3]};
    expect(true, 0, ScalarType::Float, {1, d});
    expect(true, 1, ScalarType::Long, {1});
    expect(true, 2, ScalarType::Float, cache_sizes_);
    expect(true, 3, ScalarType::Float, cache_sizes_);
    expect(true, 4, ScalarType::Bool, {cache_sizes_[2]});
    expect(false, 0, ScalarType::Float, {1, d});
    expect(false, 1, ScalarType::Float, new_sizes_);
    expect(false, 2, ScalarType::Float, new_sizes_);
    new_keys_.resize(element_count(new_sizes_));
    new_values_.resize(element_count(new_sizes_));
  } else {
    expect(true, 0, ScalarType::Float, {1, t, d});
    expect(false, 0, ScalarType::Float, {1, d});
    next_state_.resize(length_ * dim_);
  }
  user_.resize(dim_);
  partition_.resize(kPartitionSize);
}

// The golden example's history vectors encoded, then its candidates scored by their vectors . the user vector.
void Encoder::check_golden() {
  const Manifest& m = program_.manifest();
  StateData state = initial();
  if (!m.has_golden) {  // still prove the method runs and has the declared outputs
    const std::vector<float> zero(dim_, 0.0f);
    try {
      rebuild(state, zero.data(), 1);
    } catch (const NativeError& error) {
      throw NativeError(LSC4REC_E_MANIFEST,
                        program_.path() + ": the model fails on a zero vector (" + error.what() + ")");
    }
    return;
  }
  const Golden& golden = m.golden;
  const size_t candidates = golden.candidates.size(), real = golden.vectors.size() / dim_ - candidates;
  if (real == 0) throw NativeError(LSC4REC_E_MANIFEST, m.path + ": field 'golden.history' has no item");
  try {
    rebuild(state, golden.vectors.data(), real);
  } catch (const NativeError& error) {
    throw NativeError(LSC4REC_E_MANIFEST,
                      program_.path() + ": the golden example cannot be encoded (" + error.what() + ")");
  }
  double gap = 0;
  for (size_t c = 0; c < candidates; ++c) {
    const float* row = golden.vectors.data() + (real + c) * dim_;
    float score = 0;
    for (size_t j = 0; j < dim_; ++j) score += row[j] * state.user[j];
    gap = std::max(gap, std::fabs(double(score) - double(golden.scores[c])));
  }
  if (!(gap <= kGoldenTolerance)) {
    char text[64];
    std::snprintf(text, sizeof text, "%.3g (tolerance %g)", gap, kGoldenTolerance);
    throw NativeError(LSC4REC_E_MANIFEST, program_.path() + ": scores differ from the manifest's golden example by " +
                                              text + "; the artifact is not the one that was exported");
  }
}

StateData Encoder::initial() const {
  StateData state;
  if (shape_ == Shape::Recurrent) {
    state.state = start_.empty() ? std::vector<float>(next_state_.size(), 0.0f) : start_;
  } else if (shape_ == Shape::Cached) {
    state.keys.assign(element_count(cache_sizes_), 0.0f);
    state.values.assign(state.keys.size(), 0.0f);
    state.mask.assign(slots_, 0);
    state.recent.assign(length_ * dim_, 0.0f);
  } else {
    state.state.assign(length_ * dim_, 0.0f);
  }
  state.user.assign(dim_, 0.0f);
  state.partition.assign(has_partition_ ? kPartitionSize : 0, 0.0f);
  return state;
}

std::vector<OutputView> Encoder::outputs(std::initializer_list<OutputView> views) {
  std::vector<OutputView> out(views);
  if (has_partition_) out.push_back({partition_.data(), partition_.size()});
  return out;
}

void Encoder::step(StateData& state, const float* vector) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto d = static_cast<int32_t>(dim_);
  if (shape_ == Shape::Recurrent) {
    program_.run({{state.state.data(), ScalarType::Float, state_sizes_}, {vector, ScalarType::Float, {1, d}}},
                 outputs({{next_state_.data(), next_state_.size()}, {user_.data(), user_.size()}}));
    state.state.swap(next_state_);
  } else if (shape_ == Shape::Cached) {
    program_.run({{vector, ScalarType::Float, {1, d}},
                  {&state.position, ScalarType::Long, {1}},
                  {state.keys.data(), ScalarType::Float, cache_sizes_},
                  {state.values.data(), ScalarType::Float, cache_sizes_},
                  {state.mask.data(), ScalarType::Bool, {static_cast<int32_t>(slots_)}}},
                 outputs({{user_.data(), user_.size()}, {new_keys_.data(), new_keys_.size()},
                          {new_values_.data(), new_values_.size()}}));
    // The new item's keys and values replace the oldest slot's, per (layer, head) row of S x head-size floats.
    const size_t head = static_cast<size_t>(cache_sizes_[3]), rows = new_keys_.size() / head;
    for (size_t r = 0; r < rows; ++r) {
      const size_t at = (r * slots_ + state.slot) * head;
      std::memcpy(state.keys.data() + at, new_keys_.data() + r * head, head * sizeof(float));
      std::memcpy(state.values.data() + at, new_values_.data() + r * head, head * sizeof(float));
    }
    state.mask[state.slot] = 1;
    state.slot = (state.slot + 1) % slots_;
    state.position += 1;
  } else {  // the window shifted by one vector, the new one last
    std::copy(state.state.begin() + dim_, state.state.end(), next_state_.begin());
    std::copy(vector, vector + dim_, next_state_.end() - dim_);
    program_.run({{next_state_.data(), ScalarType::Float, {1, static_cast<int32_t>(length_), d}}},
                 outputs({{user_.data(), user_.size()}}));
    state.state.swap(next_state_);
  }
  state.user = user_;
  if (has_partition_) state.partition = partition_;
  state.has_user = true;
}

void Encoder::push_recent(StateData& state, const float* vector) const {
  std::copy(vector, vector + dim_, state.recent.begin() + state.recent_next * dim_);
  state.recent_next = (state.recent_next + 1) % length_;
  state.recent_count = std::min(state.recent_count + 1, length_);
}

void Encoder::append(StateData& state, const float* vector) {
  if (shape_ != Shape::Cached) return step(state, vector);
  if (state.position >= kPositionLimit) {  // start positions again from the window's vectors, the new one last
    const size_t keep = std::min(state.recent_count + 1, length_);
    std::vector<float> window(keep * dim_);
    for (size_t i = 0; i + 1 < keep; ++i) {
      const size_t slot = (state.recent_next + length_ - (keep - 1) + i) % length_;
      std::copy_n(state.recent.begin() + slot * dim_, dim_, window.begin() + i * dim_);
    }
    std::copy(vector, vector + dim_, window.end() - dim_);
    return rebuild(state, window.data(), keep);
  }
  step(state, vector);
  push_recent(state, vector);
}

void Encoder::rebuild(StateData& state, const float* vectors, size_t n) {
  const size_t keep = std::min(n, length_);
  const float* first = vectors + (n - keep) * dim_;
  StateData fresh = initial();
  if (shape_ == Shape::Window && keep) {  // one call on the right-aligned window
    std::copy(first, first + keep * dim_, fresh.state.end() - keep * dim_);
    std::lock_guard<std::mutex> lock(mutex_);
    program_.run({{fresh.state.data(), ScalarType::Float,
                   {1, static_cast<int32_t>(length_), static_cast<int32_t>(dim_)}}},
                 outputs({{user_.data(), user_.size()}}));
    fresh.user = user_;
    if (has_partition_) fresh.partition = partition_;
    fresh.has_user = true;
  } else {
    for (size_t i = 0; i < keep; ++i) {
      step(fresh, first + i * dim_);
      if (shape_ == Shape::Cached) push_recent(fresh, first + i * dim_);
    }
  }
  state = std::move(fresh);
}

}  // namespace lsc4rec

// ---------------------------------------------------------------------------------------------------- the C ABI

// Both hold the encoder: a state freed after its encoder was closed stays valid.
struct lsc4rec_encoder {
  std::shared_ptr<lsc4rec::Encoder> impl;
};

struct lsc4rec_user_state {
  std::shared_ptr<lsc4rec::Encoder> encoder;
  lsc4rec::StateData data;
};

using lsc4rec::guarded;
using lsc4rec::NativeError;
using lsc4rec::refuse;

namespace {

// Vectors (count x dim floats) must be there, of the encoder's dim and finite; user_out has room for dim floats;
// partition_out is NULL or has room for [log Z, log T], which needs a model with a partition head.
void check_call(const lsc4rec::Encoder& encoder, const char* what, const float* vectors, size_t count, size_t dim,
                const float* user_out, size_t user_len, const float* partition_out) {
  if (dim != encoder.dim())
    throw NativeError(LSC4REC_E_ARGUMENT, "dim = " + std::to_string(dim) + ": the model's vectors have " +
                                              std::to_string(encoder.dim()));
  if (count == 0) return;
  if (vectors == nullptr) throw NativeError(LSC4REC_E_ARGUMENT, std::string(what) + ": NULL buffer");
  if (user_out == nullptr) throw NativeError(LSC4REC_E_ARGUMENT, "user: NULL buffer");
  if (user_len < dim)
    throw NativeError(LSC4REC_E_ARGUMENT, "user: room for " + std::to_string(user_len) + ", the user vector has " +
                                              std::to_string(dim));
  if (partition_out != nullptr && !encoder.has_partition())
    throw NativeError(LSC4REC_E_ARGUMENT, "log_partition: the model has no partition head (pass NULL)");
  for (size_t i = 0; i < count * dim; ++i)
    if (!std::isfinite(vectors[i])) {
      char value[32];
      std::snprintf(value, sizeof value, "%g", static_cast<double>(vectors[i]));
      throw NativeError(LSC4REC_E_ARGUMENT, std::string(what) + (count > 1 ? "[" + std::to_string(i / dim) + "]" : "") +
                                                "[" + std::to_string(i % dim) + "] = " + value + ": not finite");
    }
}

void write_out(const lsc4rec::Encoder& encoder, const lsc4rec::StateData& state, float* user_out,
               float* partition_out) {
  std::copy(state.user.begin(), state.user.end(), user_out);
  if (partition_out != nullptr && encoder.has_partition())
    std::copy(state.partition.begin(), state.partition.end(), partition_out);
}

}  // namespace

extern "C" {

lsc4rec_status lsc4rec_encoder_open(const char* model_dir, const char* vocab_hash, int threads,
                                    lsc4rec_encoder** out) {
  if (out == nullptr) return refuse(LSC4REC_E_ARGUMENT, "out: NULL pointer");
  *out = nullptr;
  if (model_dir == nullptr) return refuse(LSC4REC_E_ARGUMENT, "model_dir: NULL pointer");
  return guarded(
      [&] { *out = new lsc4rec_encoder{std::make_shared<lsc4rec::Encoder>(model_dir, vocab_hash, threads)}; });
}

size_t lsc4rec_encoder_dim(const lsc4rec_encoder* encoder) { return encoder ? encoder->impl->dim() : 0; }

size_t lsc4rec_encoder_history_length(const lsc4rec_encoder* encoder) {
  return encoder ? encoder->impl->history_length() : 0;
}

int lsc4rec_encoder_has_partition(const lsc4rec_encoder* encoder) {
  return encoder ? encoder->impl->has_partition() : 0;
}

const char* lsc4rec_encoder_shape(const lsc4rec_encoder* encoder) {
  return encoder ? encoder->impl->shape_name() : "";
}

const char* lsc4rec_encoder_version(const lsc4rec_encoder* encoder) {
  return encoder ? encoder->impl->manifest().version.c_str() : "";
}

void lsc4rec_encoder_close(lsc4rec_encoder* encoder) { delete encoder; }

lsc4rec_status lsc4rec_user_state_new(lsc4rec_encoder* encoder, lsc4rec_user_state** out) {
  if (out == nullptr) return refuse(LSC4REC_E_ARGUMENT, "out: NULL pointer");
  *out = nullptr;
  if (encoder == nullptr) return refuse(LSC4REC_E_ARGUMENT, "encoder: NULL pointer");
  return guarded([&] { *out = new lsc4rec_user_state{encoder->impl, encoder->impl->initial()}; });
}

lsc4rec_status lsc4rec_user_state_append(lsc4rec_user_state* state, const float* vector, size_t dim, float* user_out,
                                         size_t user_len, float* partition_out) {
  if (state == nullptr) return refuse(LSC4REC_E_ARGUMENT, "state: NULL pointer");
  return guarded([&] {
    const lsc4rec::Encoder& encoder = *state->encoder;
    check_call(encoder, "vector", vector, 1, dim, user_out, user_len, partition_out);
    state->encoder->append(state->data, vector);
    write_out(encoder, state->data, user_out, partition_out);
  });
}

lsc4rec_status lsc4rec_user_state_rebuild(lsc4rec_user_state* state, const float* vectors, size_t num_vectors,
                                          size_t dim, float* user_out, size_t user_len, float* partition_out) {
  if (state == nullptr) return refuse(LSC4REC_E_ARGUMENT, "state: NULL pointer");
  return guarded([&] {
    const lsc4rec::Encoder& encoder = *state->encoder;
    check_call(encoder, "vectors", vectors, num_vectors, dim, user_out, user_len, partition_out);
    state->encoder->rebuild(state->data, vectors, num_vectors);
    if (num_vectors) write_out(encoder, state->data, user_out, partition_out);
  });
}

void lsc4rec_user_state_free(lsc4rec_user_state* state) { delete state; }

}  // extern "C"
