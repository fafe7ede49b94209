/* lsc4rec native runner: a C ABI over the ExecuTorch runtime, for Kotlin (JNI/JNA), Swift and Python (ctypes).
 *
 * Two kinds of artifact folder, each a .pte + manifest.json:
 * - a scorer (`lsc4rec export srm --format pte`: model.pte, item ids in, scores out): lsc4rec_scorer_*;
 * - a user encoder, the catalogue-free device model (`--format user-encoder-pte`: encoder.pte, item vectors in,
 *   the user vector out): lsc4rec_encoder_* and lsc4rec_user_state_*. The state of one user (the recurrent state,
 *   or each block's keys and values of the recent items, or the window) lives in a lsc4rec_user_state: the app
 *   appends each consumed item's vector and scores a candidate as its vector . the user vector.
 * Before the first inference, open checks the manifest's fields (its kind too), the file's size and sha256, the
 * program's inputs and outputs against the manifest, and the manifest's golden example; any mismatch refuses the
 * folder. Every function returns an lsc4rec_status; on failure lsc4rec_last_error() holds one line naming the
 * file, field and value. Nothing here aborts on bad input.
 *
 * Threads: one scorer or encoder may be shared; calls on it are serialised. A user state is used by one thread at a
 * time. lsc4rec_last_error() is per calling thread.
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

#define LSC4REC_ABI_VERSION 2  /* 2: the user encoder */

typedef enum {
  LSC4REC_OK = 0,
  LSC4REC_E_ARGUMENT = 1,     /* a NULL pointer, a wrong size, a history longer than the model's, a non-finite vector */
  LSC4REC_E_UNKNOWN_ITEM = 2, /* an id outside the catalogue (history: 0..N, candidates: 1..N) */
  LSC4REC_E_MANIFEST = 3,     /* the folder is not a valid artifact of the kind opened (manifest, size, sha256,
                                 program, golden) */
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

/* ------------------------------------------------------------------------------------------- the user encoder */

typedef struct lsc4rec_encoder lsc4rec_encoder;
typedef struct lsc4rec_user_state lsc4rec_user_state;

#define LSC4REC_PARTITION_SIZE 2 /* [log Z, log T] of the partition head */

/* Open the user encoder in `model_dir` (manifest kind "user-encoder"); vocab_hash and threads as for
 * lsc4rec_scorer_open. On failure *out is NULL. */
LSC4REC_API lsc4rec_status lsc4rec_encoder_open(const char* model_dir, const char* vocab_hash, int threads,
                                                lsc4rec_encoder** out);

/* What the manifest and the program say (0 / "" for a NULL encoder): the vector size d, the window T, whether the
 * model predicts [log Z, log T] (the est-regret request measure's input), the graph shape ("recurrent", "cached",
 * "window") and the model version (item vectors from the cloud are tagged with it). */
LSC4REC_API size_t lsc4rec_encoder_dim(const lsc4rec_encoder* encoder);
LSC4REC_API size_t lsc4rec_encoder_history_length(const lsc4rec_encoder* encoder);
LSC4REC_API int lsc4rec_encoder_has_partition(const lsc4rec_encoder* encoder);
LSC4REC_API const char* lsc4rec_encoder_shape(const lsc4rec_encoder* encoder);
LSC4REC_API const char* lsc4rec_encoder_version(const lsc4rec_encoder* encoder);

/* Release the caller's handle (NULL is a no-op); user states made from it stay valid until they are freed. */
LSC4REC_API void lsc4rec_encoder_close(lsc4rec_encoder* encoder);

/* A new user's state: no item yet (a recurrent model starts from the state after a window of padding). */
LSC4REC_API lsc4rec_status lsc4rec_user_state_new(lsc4rec_encoder* encoder, lsc4rec_user_state** out);

/* One event: the consumed item's vector (`dim` floats, dim = lsc4rec_encoder_dim, all finite) updates the state by
 * one graph call; user_out receives the user vector (user_len >= dim), partition_out (NULL, or room for
 * LSC4REC_PARTITION_SIZE floats on a model with a partition head) [log Z, log T]. On failure the state is
 * unchanged and nothing is written. */
LSC4REC_API lsc4rec_status lsc4rec_user_state_append(lsc4rec_user_state* state, const float* vector, size_t dim,
                                                     float* user_out, size_t user_len, float* partition_out);

/* Start the state again from the vectors of the recent history (num_vectors x dim floats, oldest first; the last
 * history_length are used), e.g. once vectors that were missing have arrived; outputs as for append.
 * num_vectors = 0 resets the state to a new user's and writes nothing. */
LSC4REC_API lsc4rec_status lsc4rec_user_state_rebuild(lsc4rec_user_state* state, const float* vectors,
                                                      size_t num_vectors, size_t dim, float* user_out,
                                                      size_t user_len, float* partition_out);

/* Free the state (NULL is a no-op). */
LSC4REC_API void lsc4rec_user_state_free(lsc4rec_user_state* state);

#ifdef __cplusplus
}
#endif
#endif /* LSC4REC_NATIVE_H */
