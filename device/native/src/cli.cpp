// lsc4rec-native: smoke tests and benchmarks of the C ABI, one JSON object on stdout.
//
//   lsc4rec-native score --model DIR [--vocab-hash H] [--threads 1] --history 3,7,9 --candidates 4,5,6
//   lsc4rec-native bench --model DIR [--vocab-hash H] [--threads 1] [--candidates 50] [--calls 2000] [--seed 0]
//   lsc4rec-native encode --model DIR [--vocab-hash H] [--threads 1] --vectors "0.1,0.2;0.3,0.4" [--mode append]
//   lsc4rec-native encode-bench --model DIR [--vocab-hash H] [--threads 1] [--events 2000] [--seed 0]
//   lsc4rec-native check --model DIR [--vocab-hash H] [--kind scorer|user-encoder]
//
// Errors: one line on stderr ("lsc4rec-native: error: ...") and exit code 2 (1 for a runtime failure).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "lsc4rec_native.h"

namespace {

const char* kUsage =
    "usage: lsc4rec-native score --model DIR [--vocab-hash H] [--threads N] --history IDS --candidates IDS\n"
    "       lsc4rec-native bench --model DIR [--vocab-hash H] [--threads N] [--candidates C] [--calls N] [--seed S]\n"
    "       lsc4rec-native encode --model DIR [--vocab-hash H] [--threads N] --vectors ROWS [--mode append|rebuild]\n"
    "       lsc4rec-native encode-bench --model DIR [--vocab-hash H] [--threads N] [--events N] [--seed S]\n"
    "       lsc4rec-native check --model DIR [--vocab-hash H] [--kind scorer|user-encoder]\n"
    "IDS: comma-separated item ids (history oldest first; 0 = padding). --threads: 1 (default) or 0 (thread pool).\n"
    "ROWS: item vectors of a user encoder, oldest first: floats separated by ',', vectors by ';'. encode appends\n"
    "them one event at a time (users: the user vector after each) or rebuilds the state from all of them.\n"
    "check opens the folder with every check and closes it: run it in a process of its own before loading an\n"
    "artifact you do not trust (a re-signed corrupt .pte can crash the process that compiles its XNNPACK graph).\n";

struct UsageError {
  std::string message;
};

int fail(lsc4rec_status status) {
  std::fprintf(stderr, "lsc4rec-native: error: %s\n", lsc4rec_last_error());
  return status == LSC4REC_E_RUNTIME ? 1 : 2;
}

long long parse_int(const std::string& option, const std::string& text) {
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size()) throw UsageError{option + " = '" + text + "' is not an integer"};
  return value;
}

// A float as strtof reads it ("nan" and "inf" too: the library refuses those, which the CLI lets it do).
float parse_float(const std::string& option, const std::string& text) {
  char* end = nullptr;
  const float value = std::strtof(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size())
    throw UsageError{option + " holds '" + text + "', not a number"};
  return value;
}

// Rows of floats: values separated by ',', rows by ';'; every row as long as the first. Returns (values, rows).
std::pair<std::vector<float>, size_t> parse_rows(const std::string& option, const std::string& text) {
  std::vector<float> values;
  size_t rows = 0, width = 0;
  std::stringstream all(text);
  for (std::string row; std::getline(all, row, ';');) {
    std::stringstream fields(row);
    size_t count = 0;
    for (std::string field; std::getline(fields, field, ',');) {
      values.push_back(parse_float(option, field));
      ++count;
    }
    if (rows && count != width)
      throw UsageError{option + ": vector " + std::to_string(rows) + " has " + std::to_string(count) + " numbers, " +
                       "vector 0 has " + std::to_string(width)};
    width = count;
    ++rows;
  }
  if (!rows || !width) throw UsageError{option + " holds no vector"};
  return {values, rows};
}

std::vector<int64_t> parse_ids(const std::string& option, const std::string& text) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    ids.push_back(parse_int(option, text.substr(start, comma - start)));
    start = comma + 1;
  }
  return ids;
}

std::map<std::string, std::string> parse_options(int argc, char** argv, const std::vector<std::string>& known) {
  std::map<std::string, std::string> options;
  for (int i = 2; i < argc; i += 2) {
    const std::string name = argv[i];
    if (std::find(known.begin(), known.end(), name) == known.end()) throw UsageError{"unknown option " + name};
    if (i + 1 >= argc) throw UsageError{name + " needs a value"};
    options[name] = argv[i + 1];
  }
  if (!options.count("--model")) throw UsageError{"--model DIR is required"};
  return options;
}

// VmHWM of this process image: getrusage's ru_maxrss keeps the peak of the process that forked and exec'd us.
double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  return -1;
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const double rank = q * (values.size() - 1);
  const size_t low = static_cast<size_t>(rank);
  const size_t high = std::min(low + 1, values.size() - 1);
  return values[low] + (values[high] - values[low]) * (rank - low);
}

using Options = std::map<std::string, std::string>;

std::string option(const Options& options, const char* name, const char* fallback) {
  auto it = options.find(name);
  return it == options.end() ? std::string(fallback) : it->second;
}

struct Latency {
  std::vector<double> micros;
  nlohmann::json figures(const char* prefix) const {
    double mean = 0;
    for (double m : micros) mean += m / micros.size();
    const std::string p(prefix);
    return {{p + "p50_us", percentile(micros, 0.5)}, {p + "p90_us", percentile(micros, 0.9)},
            {p + "p99_us", percentile(micros, 0.99)}, {p + "mean_us", mean}};
  }
};

template <typename Fn>
double time_us(Fn&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

int run_scorer(bool bench, const Options& options, int threads, const std::string& vocab) {
  const auto start = std::chrono::steady_clock::now();
  lsc4rec_scorer* scorer = nullptr;
  lsc4rec_status status = lsc4rec_scorer_open(options.at("--model").c_str(), vocab.empty() ? nullptr : vocab.c_str(),
                                              threads, &scorer);
  if (status != LSC4REC_OK) return fail(status);
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  nlohmann::json out = {{"model_version", lsc4rec_scorer_version(scorer)},
                        {"history_length", lsc4rec_scorer_history_length(scorer)},
                        {"num_items", lsc4rec_scorer_num_items(scorer)},
                        {"max_candidates", lsc4rec_scorer_max_candidates(scorer)},
                        {"threads", threads}};

  if (!bench) {
    if (!options.count("--candidates")) throw UsageError{"--candidates IDS is required"};
    const auto history = parse_ids("--history", option(options, "--history", ""));
    const auto candidates = parse_ids("--candidates", options.at("--candidates"));
    std::vector<float> scores(candidates.size());
    status = lsc4rec_scorer_score(scorer, history.data(), history.size(), candidates.data(), candidates.size(),
                                  scores.data(), scores.size());
    if (status != LSC4REC_OK) {
      lsc4rec_scorer_close(scorer);
      return fail(status);
    }
    out["scores"] = scores;
  } else {
    const long long num_candidates = parse_int("--candidates", option(options, "--candidates", "50"));
    const long long calls = parse_int("--calls", option(options, "--calls", "2000"));
    if (num_candidates < 1 || calls < 1) throw UsageError{"--candidates and --calls must be positive"};
    // Synthetic input: a full history and distinct-ish candidates drawn from the catalogue with a seeded generator.
    std::mt19937_64 rng(static_cast<uint64_t>(parse_int("--seed", option(options, "--seed", "0"))));
    std::uniform_int_distribution<int64_t> item(1, lsc4rec_scorer_num_items(scorer));
    std::vector<int64_t> history(lsc4rec_scorer_history_length(scorer)), candidates(num_candidates);
    for (auto& id : history) id = item(rng);
    for (auto& id : candidates) id = item(rng);
    std::vector<float> scores(candidates.size());
    Latency latency;
    const long long warmup = std::min(calls, 50LL);
    for (long long i = 0; i < calls + warmup; ++i) {
      const double us = time_us([&] {
        status = lsc4rec_scorer_score(scorer, history.data(), history.size(), candidates.data(), candidates.size(),
                                      scores.data(), scores.size());
      });
      if (status != LSC4REC_OK) {
        lsc4rec_scorer_close(scorer);
        return fail(status);
      }
      if (i >= warmup) latency.micros.push_back(us);
    }
    out.update({{"num_candidates", num_candidates}, {"calls", calls}, {"load_ms", load_ms}});
    out.update(latency.figures(""));
  }
  lsc4rec_scorer_close(scorer);
  out["peak_rss_mb"] = peak_rss_mb();
  std::puts(out.dump().c_str());
  return 0;
}

// The user encoder: `encode` appends ROWS one event at a time (or rebuilds from them); `encode-bench` times appends of
// seeded vectors (int8 levels x 0.01, as the benchmarks' stand-in cloud sends) and rebuilds from a full window.
int run_encoder(bool bench, const Options& options, int threads, const std::string& vocab) {
  std::vector<float> values;  // encode: the vectors given, `rows` of them
  size_t rows = 0;
  const std::string mode = option(options, "--mode", "append");
  const long long events = parse_int("--events", option(options, "--events", "2000"));
  const long long seed = parse_int("--seed", option(options, "--seed", "0"));
  if (!bench) {
    if (!options.count("--vectors")) throw UsageError{"--vectors ROWS is required"};
    if (mode != "append" && mode != "rebuild") throw UsageError{"--mode = '" + mode + "': append or rebuild"};
    std::tie(values, rows) = parse_rows("--vectors", options.at("--vectors"));
  } else if (events < 1) {
    throw UsageError{"--events must be positive"};
  }

  const auto start = std::chrono::steady_clock::now();
  lsc4rec_encoder* encoder = nullptr;
  lsc4rec_status status = lsc4rec_encoder_open(options.at("--model").c_str(), vocab.empty() ? nullptr : vocab.c_str(),
                                               threads, &encoder);
  if (status != LSC4REC_OK) return fail(status);
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const size_t dim = lsc4rec_encoder_dim(encoder), length = lsc4rec_encoder_history_length(encoder);
  const bool partition = lsc4rec_encoder_has_partition(encoder);
  nlohmann::json out = {{"model_version", lsc4rec_encoder_version(encoder)}, {"shape", lsc4rec_encoder_shape(encoder)},
                        {"dim", dim}, {"history_length", length}, {"has_partition", partition}, {"threads", threads}};
  lsc4rec_user_state* state = nullptr;
  status = lsc4rec_user_state_new(encoder, &state);
  lsc4rec_encoder_close(encoder);  // the state holds the encoder
  if (status != LSC4REC_OK) return fail(status);
  std::vector<float> user(dim), log_partition(LSC4REC_PARTITION_SIZE);
  float* partition_out = partition ? log_partition.data() : nullptr;
  auto finish = [&](lsc4rec_status code) {
    lsc4rec_user_state_free(state);
    return code == LSC4REC_OK ? 0 : fail(code);
  };

  if (!bench) {
    const size_t width = values.size() / rows;
    if (mode == "rebuild") {
      status = lsc4rec_user_state_rebuild(state, values.data(), rows, width, user.data(), user.size(), partition_out);
      if (status != LSC4REC_OK) return finish(status);
    } else {
      out["users"] = nlohmann::json::array();
      for (size_t row = 0; row < rows; ++row) {
        status = lsc4rec_user_state_append(state, values.data() + row * width, width, user.data(), user.size(),
                                           partition_out);
        if (status != LSC4REC_OK) return finish(status);
        out["users"].push_back(user);
      }
    }
    out["user"] = user;
    if (partition) out["log_partition"] = log_partition;
  } else {
    std::mt19937_64 rng(static_cast<uint64_t>(seed));
    std::uniform_int_distribution<int> level(-127, 127);
    std::vector<float> vectors(std::max(static_cast<size_t>(events) + 50, 50 + length) * dim);
    for (auto& v : vectors) v = 0.01f * level(rng);
    Latency append, rebuild;
    for (long long i = 0; i < events + 50; ++i) {  // the first 50 warm up
      const float* vector = vectors.data() + static_cast<size_t>(i) * dim;
      const double us = time_us([&] {
        status = lsc4rec_user_state_append(state, vector, dim, user.data(), user.size(), partition_out);
      });
      if (status != LSC4REC_OK) return finish(status);
      if (i >= 50) append.micros.push_back(us);
    }
    const long long rebuilds = std::max(1LL, events / 20);
    for (long long i = 0; i < rebuilds; ++i) {  // a full window of the vectors drawn above
      const float* window = vectors.data() + static_cast<size_t>(i % 50) * dim;
      const double us = time_us([&] {
        status = lsc4rec_user_state_rebuild(state, window, length, dim, user.data(), user.size(), partition_out);
      });
      if (status != LSC4REC_OK) return finish(status);
      rebuild.micros.push_back(us);
    }
    out.update({{"events", events}, {"rebuilds", rebuilds}, {"load_ms", load_ms}});
    out.update(append.figures("append_"));
    out.update(rebuild.figures("rebuild_"));
  }
  finish(LSC4REC_OK);
  out["peak_rss_mb"] = peak_rss_mb();
  std::puts(out.dump().c_str());
  return 0;
}

// Opens the folder with every check the C ABI makes (manifest, size, sha256, program, golden example), then closes
// it. XNNPACK's graph compiler does not validate a delegate's payload, so a .pte whose corrupt bytes were re-signed
// can crash the process that loads it: a caller that does not trust an artifact runs this in a process of its own
// first (device/runtime/native_backend.py does, for every folder it opens).
int run_check(const Options& options, int threads, const std::string& vocab) {
  const std::string kind = option(options, "--kind", "scorer");
  const char* model = options.at("--model").c_str();
  const char* hash = vocab.empty() ? nullptr : vocab.c_str();
  std::string version;
  if (kind == "scorer") {
    lsc4rec_scorer* scorer = nullptr;
    const lsc4rec_status status = lsc4rec_scorer_open(model, hash, threads, &scorer);
    if (status != LSC4REC_OK) return fail(status);
    version = lsc4rec_scorer_version(scorer);
    lsc4rec_scorer_close(scorer);
  } else if (kind == "user-encoder") {
    lsc4rec_encoder* encoder = nullptr;
    const lsc4rec_status status = lsc4rec_encoder_open(model, hash, threads, &encoder);
    if (status != LSC4REC_OK) return fail(status);
    version = lsc4rec_encoder_version(encoder);
    lsc4rec_encoder_close(encoder);
  } else {
    throw UsageError{"--kind is '" + kind + "', not scorer or user-encoder"};
  }
  std::puts(nlohmann::json({{"ok", true}, {"kind", kind}, {"model_version", version}}).dump().c_str());
  return 0;
}

int run(int argc, char** argv) {
  const std::string command = argc >= 2 ? argv[1] : "";
  if (command == "--help" || command == "-h") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const std::map<std::string, std::vector<std::string>> known = {
      {"score", {"--history", "--candidates"}},
      {"bench", {"--candidates", "--calls", "--seed"}},
      {"encode", {"--vectors", "--mode"}},
      {"encode-bench", {"--events", "--seed"}},
      {"check", {"--kind"}}};
  auto found = known.find(command);
  if (found == known.end())
    throw UsageError{command.empty() ? "a command is required (score, bench, encode, encode-bench or check)"
                                     : "unknown command " + command};
  std::vector<std::string> names{"--model", "--vocab-hash", "--threads"};
  names.insert(names.end(), found->second.begin(), found->second.end());
  const Options options = parse_options(argc, argv, names);
  const int threads = static_cast<int>(parse_int("--threads", option(options, "--threads", "1")));
  const std::string vocab = option(options, "--vocab-hash", "");
  if (command == "check") return run_check(options, threads, vocab);
  if (command == "score" || command == "bench") return run_scorer(command == "bench", options, threads, vocab);
  return run_encoder(command == "encode-bench", options, threads, vocab);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& error) {
    std::fprintf(stderr, "lsc4rec-native: error: %s\n%s", error.message.c_str(), kUsage);
    return 2;
  }
}
