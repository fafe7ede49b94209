// manifest.json for the native runner: the fields it uses, each checked with a one-line error naming it.
#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "program.hpp"

namespace lsc4rec {

using nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& message) {
  throw NativeError(LSC4REC_E_MANIFEST, path + ": " + message);
}

std::string shown(const json& value) {
  std::string text = value.dump();
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

const json& field(const json& data, const std::string& path, const char* name) {
  auto it = data.find(name);
  if (it == data.end()) fail(path, std::string("missing field '") + name + "'");
  return *it;
}

std::string text_field(const json& data, const std::string& path, const char* name) {
  const json& value = field(data, path, name);
  if (!value.is_string()) fail(path, std::string("field '") + name + "' = " + shown(value) + " must be a string");
  return value.get<std::string>();
}

int64_t positive_field(const json& data, const std::string& path, const char* name) {
  const json& value = field(data, path, name);
  if (!value.is_number_integer() || value.get<int64_t>() <= 0)
    fail(path, std::string("field '") + name + "' = " + shown(value) + " must be a positive integer");
  return value.get<int64_t>();
}

ScalarType parse_dtype(const std::string& path, const std::string& where, const std::string& dtype) {
  if (dtype == "int64") return ScalarType::Long;
  if (dtype == "int32") return ScalarType::Int;
  if (dtype == "float32") return ScalarType::Float;
  if (dtype == "bool") return ScalarType::Bool;
  fail(path, "field '" + where + ".dtype' = \"" + dtype + "\" is not int64, int32, float32 or bool");
}

std::vector<TensorSpec> parse_specs(const json& data, const std::string& path, const char* name) {
  const json& raw = field(data, path, name);
  if (!raw.is_array() || raw.empty()) fail(path, std::string("field '") + name + "' must be a non-empty list");
  std::vector<TensorSpec> specs;
  for (size_t i = 0; i < raw.size(); ++i) {
    const std::string where = std::string(name) + "[" + std::to_string(i) + "]";
    const json& spec = raw[i];
    if (!spec.is_object() || !spec.contains("name") || !spec["name"].is_string() || !spec.contains("dtype") ||
        !spec["dtype"].is_string() || !spec.contains("shape") || !spec["shape"].is_array())
      fail(path, "field '" + where + "' = " + shown(spec) + " is not a tensor spec");
    TensorSpec out{spec["name"].get<std::string>(), parse_dtype(path, where, spec["dtype"].get<std::string>()), {}};
    for (const json& dim : spec["shape"]) {
      if (dim.is_string()) {
        out.shape.push_back(-1);  // a named, dynamic dimension
      } else if (dim.is_number_integer() && dim.get<int64_t>() > 0) {
        out.shape.push_back(dim.get<int64_t>());
      } else {
        fail(path, "field '" + where + ".shape' holds " + shown(dim) + ", not a size or a dimension name");
      }
    }
    specs.push_back(std::move(out));
  }
  return specs;
}

template <typename T>
std::vector<T> number_list(const json& golden, const std::string& path, const char* name) {
  const json& raw = field(golden, path, name);
  if (!raw.is_array()) fail(path, std::string("field 'golden.") + name + "' must be a list");
  std::vector<T> out;
  for (const json& v : raw) {
    if (std::is_integral<T>::value ? !v.is_number_integer() : !v.is_number())
      fail(path, std::string("field 'golden.") + name + "' holds " + shown(v));
    out.push_back(v.get<T>());
  }
  return out;
}

}  // namespace

Manifest read_manifest(const std::string& dir, const std::string& kind) {
  Manifest m;
  m.path = dir + "/manifest.json";
  std::ifstream in(m.path, std::ios::binary);
  if (!in) fail(m.path, "no manifest");
  std::stringstream text;
  text << in.rdbuf();
  json data = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (data.is_discarded()) fail(m.path, "not valid JSON");
  if (!data.is_object()) fail(m.path, "expected a JSON object");

  const std::string format = text_field(data, m.path, "format");
  if (format != "pte") fail(m.path, "field 'format' = \"" + format + "\": the native runner runs pte artifacts");
  // "scorer" (ids in, scores out; the default when absent) opens as a scorer, "user-encoder" (item vectors in, the
  // user vector out) as an encoder.
  auto found = data.find("kind");
  m.kind = found == data.end() || found->is_null() ? kScorerKind : found->is_string() ? found->get<std::string>() : "";
  if (m.kind != kScorerKind && m.kind != kEncoderKind)
    fail(m.path, "field 'kind' = " + shown(*found) + " is not \"scorer\" or \"user-encoder\"");
  if (m.kind != kind)
    fail(m.path, "field 'kind' = \"" + m.kind + "\": " +
                     (m.kind == kScorerKind ? "a scorer, open it with lsc4rec_scorer_open"
                                            : "a user encoder, open it with lsc4rec_encoder_open"));
  m.version = text_field(data, m.path, "version");
  m.file_name = text_field(data, m.path, "file_name");
  if (m.file_name.empty() || m.file_name[0] == '.' || m.file_name.find_first_of("/\\") != std::string::npos)
    fail(m.path, "field 'file_name' = \"" + m.file_name + "\" must be a plain file name");
  m.sha256 = text_field(data, m.path, "sha256");
  if (m.sha256.size() != 64 || m.sha256.find_first_not_of("0123456789abcdef") != std::string::npos)
    fail(m.path, "field 'sha256' = \"" + m.sha256 + "\" is not a hex sha256");
  m.vocab_hash = text_field(data, m.path, "vocab_hash");
  m.size_bytes = positive_field(data, m.path, "size_bytes");
  m.history_length = positive_field(data, m.path, "history_length");
  m.num_items = positive_field(data, m.path, "num_items");
  m.inputs = parse_specs(data, m.path, "inputs");
  m.outputs = parse_specs(data, m.path, "outputs");
  for (size_t i = 0; i < m.outputs.size(); ++i)
    if (m.outputs[i].dtype != ScalarType::Float)
      fail(m.path, "field 'outputs[" + std::to_string(i) + "].dtype' = " + dtype_name(m.outputs[i].dtype) +
                       ", expected float32");
  if (m.kind == kEncoderKind) m.vector_dim = positive_field(data, m.path, "vector_dim");

  auto golden = data.find("golden");
  if (golden != data.end() && !golden->is_null()) {
    if (!golden->is_object()) fail(m.path, "field 'golden' must be an object");
    m.has_golden = true;
    m.golden.history = number_list<int64_t>(*golden, m.path, "history");
    m.golden.candidates = number_list<int64_t>(*golden, m.path, "candidates");
    m.golden.scores = number_list<float>(*golden, m.path, "scores");
    if (m.golden.history.size() != static_cast<size_t>(m.history_length) || m.golden.candidates.empty() ||
        m.golden.candidates.size() != m.golden.scores.size())
      fail(m.path, "field 'golden' must hold history (" + std::to_string(m.history_length) +
                       " ids), candidates and one score per candidate");
    if (m.kind == kEncoderKind) {  // one vector per history item (non-padding), then per candidate
      m.golden.vectors = number_list<float>(*golden, m.path, "vectors");
      const size_t real = static_cast<size_t>(
          std::count_if(m.golden.history.begin(), m.golden.history.end(), [](int64_t id) { return id > 0; }));
      const size_t rows = real + m.golden.candidates.size();
      if (m.golden.vectors.size() != rows * static_cast<size_t>(m.vector_dim))
        fail(m.path, "field 'golden.vectors' holds " + std::to_string(m.golden.vectors.size()) + " numbers, " +
                         std::to_string(rows) + " vectors of " + std::to_string(m.vector_dim) + " expected");
    }
  }
  return m;
}

}  // namespace lsc4rec
