// A thin RAII layer over SQLite (after SQLiteCpp): a connection, statements
// prepared once and reset after each use, and a transaction guard that rolls
// back unless committed. Failures throw storage_error with SQLite's message.
#pragma once

#include "core/error.hpp"
#include "storage/records.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <sqlite3.h>
#include <stdexcept>
#include <string>
#include <string_view>

namespace klingd::storage {

class storage_error : public std::runtime_error {
public:
    storage_error(std::string what, int code) : std::runtime_error(std::move(what)), code_(code) {}
    int code() const { return code_; }

private:
    int code_;
};

// The kind of a storage failure in klingd's error category (busy, full, read-only, other).
core::errc errc_of(const storage_error& e);

// A charge the spend limits refuse: the transaction is rolled back, nothing written.
class spend_refused : public std::runtime_error {
public:
    // what(): "<daily_limit|monthly_limit> <spent today> <spent this month>" (micro-units).
    spend_refused(spend_limit_kind k, std::int64_t today, std::int64_t month)
        : std::runtime_error((k == spend_limit_kind::daily ? "daily_limit " : "monthly_limit ") +
                             std::to_string(today) + " " + std::to_string(month)),
          kind_(k) {}
    spend_limit_kind kind() const { return kind_; }

private:
    spend_limit_kind kind_;
};

class connection {
public:
    // Throws storage_error when the file cannot be opened.
    connection(const std::string& path, int flags);
    sqlite3* get() const { return db_.get(); }
    // Runs SQL without results; throws storage_error naming what on failure.
    void exec(const std::string& sql, std::string_view what);
    [[noreturn]] void fail(std::string_view what, int rc) const;

private:
    struct closer {
        void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
    };
    std::unique_ptr<sqlite3, closer> db_;
};

class statement {
public:
    statement(connection& c, std::string_view sql);
    statement(statement&&) = default;

    statement& bind(int i, std::int64_t v);
    statement& bind(int i, int v) { return bind(i, static_cast<std::int64_t>(v)); }
    statement& bind(int i, std::string_view v);
    statement& bind(int i, const std::string& v) { return bind(i, std::string_view(v)); }
    statement& bind(int i, const char* v) { return bind(i, std::string_view(v)); }
    statement& bind(int i, std::nullopt_t);
    template <typename T>
    statement& bind(int i, const std::optional<T>& v) {
        return v ? bind(i, *v) : bind(i, std::nullopt);
    }

    // True while there is a row; throws on error. Resets itself when done.
    bool step();
    // Runs a statement that returns no rows.
    void run();
    void reset();

    bool is_null(int col) const;
    int columns() const; // of the result
    std::int64_t int64(int col) const;
    double real(int col) const;
    std::string text(int col) const;
    std::optional<std::string> opt_text(int col) const;
    std::optional<std::int64_t> opt_int64(int col) const;

private:
    struct finalizer {
        void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
    };
    connection* conn_;
    std::unique_ptr<sqlite3_stmt, finalizer> stmt_;
};

class transaction {
public:
    explicit transaction(connection& c);
    transaction(const transaction&) = delete;
    ~transaction(); // rolls back unless committed; never throws
    void commit();

private:
    connection& c_;
    bool done_ = false;
};

} // namespace klingd::storage
