// The pace a download must keep, as a pure rule over times given to it (no clock
// reads): the HTTP client feeds it each read's bytes and asks how long the next read
// may wait.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fmt/format.h>
#include <optional>
#include <string>

namespace klingd::core {

// The pace a download must keep, so that a server trickling bytes cannot hold one of
// the few download slots forever: at least min_rate over every window, and, when the
// length is announced, all of it by the time that length takes at min_rate plus a window.
class download_pace {
public:
    using clock_type = std::chrono::steady_clock;
    static constexpr std::uint64_t min_rate = 16 * 1024; // bytes per second
    static constexpr std::chrono::seconds window{10};

    download_pace(clock_type::time_point start, std::optional<std::uint64_t> length)
        : start_(start), window_start_(start) {
        if (length)
            deadline_ = start + window +
                        std::chrono::seconds(static_cast<std::int64_t>(*length / min_rate));
    }
    // How long the next read may wait for its first byte before the pace is broken.
    clock_type::duration patience(clock_type::time_point now) const {
        auto left = clock_type::duration::max();
        if (bytes_ < min_rate * static_cast<std::uint64_t>(window.count()))
            left = window_start_ + window - now;
        if (deadline_)
            left = std::min(left, *deadline_ - now);
        return std::max(left, clock_type::duration(std::chrono::milliseconds(1)));
    }
    // n more bytes at now; why the download must be cut, or "".
    std::string on_bytes(std::size_t n, clock_type::time_point now) {
        bytes_ += n;
        if (deadline_ && now > *deadline_)
            return fmt::format(
                "it ran past the {} s its announced length allows at {} KiB/s",
                std::chrono::duration_cast<std::chrono::seconds>(*deadline_ - start_).count(),
                min_rate / 1024);
        if (now - window_start_ < window)
            return {};
        auto secs = std::chrono::duration<double>(now - window_start_).count();
        if (static_cast<double>(bytes_) < static_cast<double>(min_rate) * secs)
            return fmt::format("{} bytes in {:.0f} s, under the minimum of {} KiB/s", bytes_, secs,
                               min_rate / 1024);
        window_start_ = now;
        bytes_ = 0;
        return {};
    }

private:
    clock_type::time_point start_;
    clock_type::time_point window_start_;
    std::optional<clock_type::time_point> deadline_;
    std::uint64_t bytes_ = 0;
};

} // namespace klingd::core
