// lsc4rec-native: smoke tests and benchmarks of the C ABI, one JSON object on stdout.
//
//   lsc4rec-native score --model DIR [--vocab-hash H] [--threads 1] --history 3,7,9 --candidates 4,5,6
//   lsc4rec-native bench --model DIR [--vocab-hash H] [--threads 1] [--candidates 50] [--calls 2000] [--seed 0]
//
// Errors: one line on stderr ("lsc4rec-native: error: ...") and exit code 2 (1 for a runtime failure).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lsc4rec_native.h"

namespace {

const char* kUsage =
    "usage: lsc4rec-native score --model DIR [--vocab-hash H] [--threads N] --history IDS --candidates IDS\n"
    "       lsc4rec-native bench --model DIR [--vocab-hash H] [--threads N] [--candidates C] [--calls N] [--seed S]\n"
    "IDS: comma-separated item ids (history oldest first; 0 = padding). --threads: 1 (default) or 0 (thread pool).\n";

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

int run(int argc, char** argv) {
  if (argc < 2 || (std::strcmp(argv[1], "score") != 0 && std::strcmp(argv[1], "bench") != 0)) {
    if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    throw UsageError{argc < 2 ? "a command is required (score or bench)" : std::string("unknown command ") + argv[1]};
  }
  const bool bench = std::strcmp(argv[1], "bench") == 0;
  const auto options = parse_options(argc, argv, bench ? std::vector<std::string>{"--model", "--vocab-hash", "--threads",
                                                                                   "--candidates", "--calls", "--seed"}
                                                       : std::vector<std::string>{"--model", "--vocab-hash", "--threads",
                                                                                   "--history", "--candidates"});
  auto option = [&](const char* name, const char* fallback) {
    auto it = options.find(name);
    return it == options.end() ? std::string(fallback) : it->second;
  };
  const int threads = static_cast<int>(parse_int("--threads", option("--threads", "1")));
  const std::string vocab = option("--vocab-hash", "");

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
    const auto history = parse_ids("--history", option("--history", ""));
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
    const long long num_candidates = parse_int("--candidates", option("--candidates", "50"));
    const long long calls = parse_int("--calls", option("--calls", "2000"));
    if (num_candidates < 1 || calls < 1) throw UsageError{"--candidates and --calls must be positive"};
    // Synthetic input: a full history and distinct-ish candidates drawn from the catalogue with a seeded generator.
    std::mt19937_64 rng(static_cast<uint64_t>(parse_int("--seed", option("--seed", "0"))));
    std::uniform_int_distribution<int64_t> item(1, lsc4rec_scorer_num_items(scorer));
    std::vector<int64_t> history(lsc4rec_scorer_history_length(scorer)), candidates(num_candidates);
    for (auto& id : history) id = item(rng);
    for (auto& id : candidates) id = item(rng);
    std::vector<float> scores(candidates.size());
    std::vector<double> micros;
    const long long warmup = std::min(calls, 50LL);
    for (long long i = 0; i < calls + warmup; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      status = lsc4rec_scorer_score(scorer, history.data(), history.size(), candidates.data(), candidates.size(),
                                    scores.data(), scores.size());
      const auto t1 = std::chrono::steady_clock::now();
      if (status != LSC4REC_OK) {
        lsc4rec_scorer_close(scorer);
        return fail(status);
      }
      if (i >= warmup) micros.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    double mean = 0;
    for (double m : micros) mean += m / micros.size();
    out.update({{"num_candidates", num_candidates}, {"calls", calls}, {"load_ms", load_ms},
                {"p50_us", percentile(micros, 0.5)}, {"p90_us", percentile(micros, 0.9)},
                {"p99_us", percentile(micros, 0.99)}, {"mean_us", mean}});
  }
  lsc4rec_scorer_close(scorer);
  out["peak_rss_mb"] = peak_rss_mb();
  std::puts(out.dump().c_str());
  return 0;
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
