// The log sink: stderr, one write per line, syslog level prefix.
#include "runtime/log.hpp"

#include <atomic>
#include <cstdlib>
#include <unistd.h>

namespace klingd::log {
namespace {
std::atomic<level> threshold{level::info};
}

bool parse_level(std::string_view name, level& out) {
    static constexpr std::pair<std::string_view, level> names[] = {
        {"error", level::error}, {"warning", level::warning}, {"notice", level::notice},
        {"info", level::info},   {"debug", level::debug},
    };
    for (auto [n, l] : names) {
        if (n == name) {
            out = l;
            return true;
        }
    }
    return false;
}

void set_level(level l) {
    threshold.store(l, std::memory_order_relaxed);
}
level current_level() {
    return threshold.load(std::memory_order_relaxed);
}
bool enabled(level l) {
    return static_cast<int>(l) <= static_cast<int>(current_level());
}

void write(level l, std::string_view message) {
    std::string line;
    line.reserve(message.size() + 5);
    line += '<';
    line += static_cast<char>('0' + static_cast<int>(l));
    line += '>';
    for (char c : message) {
        if (c == '\n') {
            line += "\\n";
        } else if (c == '\r') {
            line += "\\r";
        } else {
            line += c;
        }
    }
    line += '\n';
    const char* p = line.data();
    std::size_t left = line.size();
    while (left > 0) {
        ssize_t n = ::write(STDERR_FILENO, p, left);
        if (n <= 0)
            return; // nowhere left to report a failing stderr
        p += n;
        left -= static_cast<std::size_t>(n);
    }
}

void exit_on_exception(std::exception_ptr e) {
    if (!e)
        return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        error("internal error, exiting: {}", ex.what());
    } catch (...) {
        error("internal error, exiting");
    }
    std::abort();
}

} // namespace klingd::log
