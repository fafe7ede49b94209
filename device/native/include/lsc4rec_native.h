/* lsc4rec native scorer: a C ABI over the ExecuTorch runtime, for Kotlin (JNI/JNA), Swift and Python (ctypes).
 *
 * A scorer is opened from an artifact folder (model.pte + manifest.json, as `lsc4rec export srm --format pte`
 * writes it). Before the first inference, open checks the manifest's fields, the file's size and sha256, the
 * program's inputs and output against the manifest, and the manifest's golden example; any mismatch refuses the
 * folder. Every function returns an lsc4rec_status; on failure lsc4rec_last_error() holds one line naming the
 * file, field and value. Nothing here aborts on bad input.
 *
 * Threads: one scorer may be shared; calls on it are serialised. lsc4rec_last_error() is per calling thread.
 */
#ifndef LSC4REC_NATIVE_H
#define LSC4REC_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LSC4REC_API __attribute__((visibility("default")))
#else
#define LSC4REC_API
#endif

#define LSC4REC_ABI_VERSION 1

typedef enum {
  LSC4REC_OK = 0,
  LSC4REC_E_ARGUMENT = 1,     /* a NULL pointer, a wrong size, a history longer than the model's */
  LSC4REC_E_UNKNOWN_ITEM = 2, /* an id outside the catalogue (history: 0..N, candidates: 1..N) */
  LSC4REC_E_MANIFEST = 3,     /* the folder is not a valid artifact (manifest, size, sha256, program, golden) */
  LSC4REC_E_CATALOG = 4,      /* the manifest is for another catalogue (vocab hash) */
  LSC4REC_E_RUNTIME = 5       /* the runtime failed on valid input, or gave non-finite scores */
} lsc4rec_status;

typedef struct lsc4rec_scorer lsc4rec_scorer;

/* LSC4REC_ABI_VERSION of the loaded library (a caller checks it against the header it was written for). */
LSC4REC_API int lsc4rec_abi_version(void);

/* The last error of this thread ("" when none); valid until the next call from the same thread. */
LSC4REC_API const char* lsc4rec_last_error(void);

/* Open `model_dir`. vocab_hash: the catalogue the caller expects (NULL: not checked). threads: 1 runs inference
 * in the calling thread; 0 uses ExecuTorch's shared thread pool. On failure *out is NULL. */
LSC4REC_API lsc4rec_status lsc4rec_scorer_open(const char* model_dir, const char* vocab_hash, int threads,
                                               lsc4rec_scorer** out);

/* Scores of `num_candidates` candidates for one user: history holds `history_len` ids (0 = padding, oldest
 * first; at most lsc4rec_scorer_history_length, shorter ones are left-padded), candidates ids in 1..N, scores
 * receives `scores_len` >= num_candidates floats. */
LSC4REC_API lsc4rec_status lsc4rec_scorer_score(lsc4rec_scorer* scorer, const int64_t* history, size_t history_len,
                                                const int64_t* candidates, size_t num_candidates, float* scores,
                                                size_t scores_len);

/* What the manifest and the program say (0 / "" for a NULL scorer). */
LSC4REC_API size_t lsc4rec_scorer_history_length(const lsc4rec_scorer* scorer);
LSC4REC_API int64_t lsc4rec_scorer_num_items(const lsc4rec_scorer* scorer);
LSC4REC_API size_t lsc4rec_scorer_max_candidates(const lsc4rec_scorer* scorer);
LSC4REC_API const char* lsc4rec_scorer_version(const lsc4rec_scorer* scorer);

/* Free the scorer (NULL is a no-op). */
LSC4REC_API void lsc4rec_scorer_close(lsc4rec_scorer* scorer);

#ifdef __cplusplus
}
#endif
#endif /* LSC4REC_NATIVE_H */
