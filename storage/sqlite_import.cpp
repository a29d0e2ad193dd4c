// Pages of 500 jobs read from SQLite (read-only), each copied in one statement.
#include "storage/sqlite_import.hpp"

#include "storage/job_store.hpp"
#include "storage/sqlite.hpp"

#include <fmt/format.h>

namespace klingd::storage {

namespace {
constexpr std::int64_t page = 500;
// A pruned job's tombstone carries its content's hash where params go (its params are
// gone); pg_repository::import puts it back in content_sha256.
constexpr const char* columns =
    "id, model, CASE WHEN state = 'pruned' THEN content_sha256 ELSE params END, priority, "
    "state, request_id, status_url, response_url, error, outputs, "
    "result, created_at, updated_at, submitted_at, remote_done_at, finished_at, attempts, polls, "
    "source";
constexpr int column_count = 19;
} // namespace

boost::asio::awaitable<core::result<import_report>> import_sqlite(const std::string& path,
                                                                  pg_repository& into) {
    import_report report;
    std::optional<connection> db;
    try {
        db.emplace(path, SQLITE_OPEN_READONLY);
        statement v(*db, "PRAGMA user_version");
        if (!v.step() || v.int64(0) < 1)
            co_return core::error(core::errc::store_failed,
                                  fmt::format("{} is not a klingd database", path));
        if (v.int64(0) > job_store::schema_version)
            co_return core::error(
                core::errc::store_failed,
                fmt::format("{} has schema version {}, newer than this klingd understands ({})",
                            path, v.int64(0), job_store::schema_version));
    } catch (const storage_error& e) {
        co_return core::error(core::errc::store_failed,
                              fmt::format("cannot read {}: {}", path, e.what()));
    }
    std::int64_t version = 0;
    {
        statement v(*db, "PRAGMA user_version");
        version = v.step() ? v.int64(0) : 0;
    }
    // Rows of a table about the jobs of this page, as text (NULL kept), when the
    // database's schema has it.
    auto rows_of = [&](std::int64_t since_version, const std::string& select, std::int64_t from,
                       std::int64_t to, std::vector<std::vector<pg::param>>& into) {
        if (version < since_version)
            return;
        statement q(*db, select + " WHERE job_id IN (SELECT id FROM jobs WHERE rowid > ?1 AND "
                                  "rowid <= ?2) ORDER BY rowid");
        q.bind(1, from).bind(2, to);
        while (q.step()) {
            std::vector<pg::param> row;
            for (int c = 0; c < q.columns(); ++c)
                row.push_back(q.is_null(c) ? pg::param{} : pg::param{q.text(c)});
            into.push_back(std::move(row));
        }
    };
    std::int64_t after = 0;
    for (;;) {
        pg_repository::import_batch batch;
        std::int64_t last = after;
        try {
            statement s(*db, fmt::format("SELECT rowid, {} FROM jobs WHERE rowid > ?1 "
                                         "ORDER BY rowid LIMIT ?2",
                                         columns));
            s.bind(1, after).bind(2, page);
            while (s.step()) {
                last = s.int64(0);
                std::vector<pg::param> row;
                for (int c = 1; c <= column_count; ++c)
                    row.push_back(s.is_null(c) ? pg::param{} : pg::param{s.text(c)});
                batch.jobs.push_back(std::move(row));
            }
            if (batch.jobs.empty())
                break;
            statement h(*db, "SELECT job_id, at, state, note, request_id FROM history WHERE "
                             "job_id IN (SELECT id FROM jobs WHERE rowid > ?1 AND rowid <= ?2) "
                             "ORDER BY rowid");
            h.bind(1, after).bind(2, last);
            while (h.step())
                batch.history.push_back({h.text(0), h.text(1), h.text(2), h.text(3),
                                         h.is_null(4) ? pg::param{} : pg::param{h.text(4)}});
            rows_of(3, "SELECT job_id, attempt, model, at, micro, refunded FROM spend", after, last,
                    batch.spend);
            rows_of(4, "SELECT job_id, url, path, sha256, bytes, mime, hosted_url FROM inputs",
                    after, last, batch.inputs);
            rows_of(5,
                    "SELECT event_id, target, job_id, type, payload, attempts, outcome, "
                    "last_error, next_at FROM deliveries",
                    after, last, batch.deliveries);
        } catch (const storage_error& e) {
            co_return core::error(core::errc::store_failed,
                                  fmt::format("cannot read {}: {}", path, e.what()));
        }
        after = last;
        report.read += batch.jobs.size();
        auto r = co_await into.import(std::move(batch));
        if (!r)
            co_return r.error();
        report.imported += r->imported;
        report.already += r->already;
        report.history += r->history;
        report.conflicts.insert(report.conflicts.end(), r->conflicts.begin(), r->conflicts.end());
    }
    co_return report;
}

} // namespace klingd::storage
