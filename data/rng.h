// A small portable PRNG and the seeded helpers built on it (synthetic data, loader order, mixtures).
// The standard distributions are implementation-defined, so everything that must be reproducible
// across compilers and standard libraries draws from this instead.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

namespace owl2::data {

// splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  // Uniform integer in [0, n), n > 0; rejection sampling keeps it unbiased on every platform.
  uint64_t below(uint64_t n) {
    if (n == 0) throw std::invalid_argument("Rng::below: n must be > 0");
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

  // Uniform double in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

// Mixes up to three words into one seed (order matters).
inline uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0) {
  uint64_t h = Rng(a ^ 0x6A09E667F3BCC909ull).next();
  h = Rng(h ^ (b * 0x9E3779B97F4A7C15ull)).next();
  return Rng(h ^ (c * 0xC2B2AE3D27D4EB4Full + 1)).next();
}

// Fisher-Yates permutation of 0..n-1 drawn from `rng`.
inline std::vector<size_t> permutation(size_t n, Rng& rng) {
  std::vector<size_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = i;
  for (size_t i = n; i > 1; --i) std::swap(p[i - 1], p[rng.below(i)]);
  return p;
}

}  // namespace owl2::data
