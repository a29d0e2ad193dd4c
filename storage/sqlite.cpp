// SQLite wrappers: errors become storage_error, handles are freed by RAII.
#include "storage/sqlite.hpp"

#include <fmt/format.h>

namespace klingd::storage {

core::errc errc_of(const storage_error& e) {
    switch (e.code() & 0xff) { // the primary result code
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return core::errc::store_busy;
    case SQLITE_FULL:
        return core::errc::store_full;
    case SQLITE_READONLY:
        return core::errc::store_read_only;
    default:
        return core::errc::store_failed;
    }
}

connection::connection(const std::string& path, int flags) {
    sqlite3* raw = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    db_.reset(raw);
    if (rc != SQLITE_OK)
        throw storage_error(fmt::format("cannot open database {}: {}", path,
                                        raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)),
                            rc);
    sqlite3_extended_result_codes(raw, 1);
}

void connection::fail(std::string_view what, int rc) const {
    throw storage_error(fmt::format("{}: {}", what, sqlite3_errmsg(db_.get())), rc);
}

void connection::exec(const std::string& sql, std::string_view what) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_.get(), sql.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
        std::string msg = err ? err : sqlite3_errstr(rc);
        sqlite3_free(err);
        throw storage_error(fmt::format("{}: {}", what, msg), rc);
    }
}

statement::statement(connection& c, std::string_view sql) : conn_(&c) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v3(c.get(), sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    stmt_.reset(raw);
    if (rc != SQLITE_OK)
        c.fail(fmt::format("cannot prepare \"{}\"", sql.substr(0, 60)), rc);
}

statement& statement::bind(int i, std::int64_t v) {
    if (int rc = sqlite3_bind_int64(stmt_.get(), i, v); rc != SQLITE_OK)
        conn_->fail("bind", rc);
    return *this;
}

statement& statement::bind(int i, std::string_view v) {
    if (int rc =
            sqlite3_bind_text64(stmt_.get(), i, v.data(), v.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
        rc != SQLITE_OK)
        conn_->fail("bind", rc);
    return *this;
}

statement& statement::bind(int i, std::nullopt_t) {
    if (int rc = sqlite3_bind_null(stmt_.get(), i); rc != SQLITE_OK)
        conn_->fail("bind", rc);
    return *this;
}

bool statement::step() {
    int rc = sqlite3_step(stmt_.get());
    if (rc == SQLITE_ROW)
        return true;
    if (rc == SQLITE_DONE) {
        reset();
        return false;
    }
    std::string msg = sqlite3_errmsg(conn_->get());
    reset();
    throw storage_error(fmt::format("{}: {}",
                                    sqlite3_sql(stmt_.get())
                                        ? std::string_view(sqlite3_sql(stmt_.get())).substr(0, 60)
                                        : "",
                                    msg),
                        rc);
}

void statement::run() {
    while (step()) {
    }
}

void statement::reset() {
    sqlite3_reset(stmt_.get());
    sqlite3_clear_bindings(stmt_.get());
}

int statement::columns() const {
    return sqlite3_column_count(stmt_.get());
}
bool statement::is_null(int col) const {
    return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL;
}
std::int64_t statement::int64(int col) const {
    return sqlite3_column_int64(stmt_.get(), col);
}
double statement::real(int col) const {
    return sqlite3_column_double(stmt_.get(), col);
}

std::string statement::text(int col) const {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_.get(), col));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_.get(), col)))
             : std::string();
}

std::optional<std::string> statement::opt_text(int col) const {
    if (is_null(col))
        return std::nullopt;
    return text(col);
}

std::optional<std::int64_t> statement::opt_int64(int col) const {
    if (is_null(col))
        return std::nullopt;
    return int64(col);
}

transaction::transaction(connection& c) : c_(c) {
    c_.exec("BEGIN IMMEDIATE", "begin transaction");
}

transaction::~transaction() {
    if (!done_)
        sqlite3_exec(c_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void transaction::commit() {
    c_.exec("COMMIT", "commit");
    done_ = true;
}

} // namespace klingd::storage
