// Money as klingd keeps it: whole micro-units (1e-6 of the unit prices are given in), so
// that sums of prices like 0.035 never drift.
#pragma once

#include <cstdint>
#include <string>

namespace klingd::core {

// "0.035", "12", "0.000001": the shortest exact decimal text of an amount.
inline std::string money_text(std::int64_t micro) {
    bool negative = micro < 0;
    auto v = static_cast<std::uint64_t>(negative ? -(micro + 1) : micro) + (negative ? 1 : 0);
    std::string out = std::to_string(v / 1000000);
    auto frac = v % 1000000;
    if (frac != 0) {
        std::string f = std::to_string(frac);
        f.insert(0, 6 - f.size(), '0');
        while (f.back() == '0')
            f.pop_back();
        out += "." + f;
    }
    return negative ? "-" + out : out;
}

// As a JSON or Prometheus number (for display; sums are made in micro-units).
inline double money_value(std::int64_t micro) {
    return static_cast<double>(micro) / 1e6;
}

} // namespace klingd::core
