// exp over a row, written so the compiler vectorises it.
#pragma once

#include <cmath>
#include <cstdint>

namespace llmppl {

// row[j] = exp(row[j] - shift) * scale, for row[j] <= shift.
template <typename T>
inline void exp_shifted_scaled(T* row, int64_t n, T shift, T scale) {
  for (int64_t j = 0; j < n; ++j) row[j] = std::exp(row[j] - shift) * scale;
}

}  // namespace llmppl
