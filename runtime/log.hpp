// One line per event on stderr, with a syslog level prefix (<3>..<7>) so that
// journald keeps the level. Messages below the configured level are dropped.
#pragma once

#include <exception>
#include <fmt/format.h>
#include <string>
#include <string_view>

namespace klingd::log {

enum class level { error = 3, warning = 4, notice = 5, info = 6, debug = 7 };

// Returns false, and leaves out untouched, when name is not a level.
bool parse_level(std::string_view name, level& out);

void set_level(level l);
level current_level();
bool enabled(level l);

// Writes "<N>message\n" to stderr in one write; newlines inside message are escaped.
void write(level l, std::string_view message);

template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(level::error))
        write(level::error, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warning(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(level::warning))
        write(level::warning, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void notice(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(level::notice))
        write(level::notice, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(level::info))
        write(level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(level::debug))
        write(level::debug, fmt::format(f, std::forward<Args>(args)...));
}

// The completion handler of a daemon coroutine that must never throw: one that does
// has lost track of its duty, so this logs why and ends the process (systemd
// restarts it; every job resumes from the database).
void exit_on_exception(std::exception_ptr e);

} // namespace klingd::log
