// `klingd --import-sqlite FILE`: every job of a single host's SQLite database, with its
// history, copied into the cluster's PostgreSQL database, once. A job id the cluster
// already has is left as it is (the same content: already imported; other content: a
// conflict, counted and named). Jobs keep their states: the cluster's nodes take the
// unfinished ones as they take those of a node that stopped (a job caught in
// submitting follows jobs.resubmit_unknown). The jobs are only read from the SQLite
// file; `klingd --import-sqlite` marks it first (meta imported_into_cluster), and a
// single-host klingd refuses to start on a marked file.
#pragma once

#include "storage/pg_repository.hpp"

#include <boost/asio/awaitable.hpp>
#include <string>
#include <vector>

namespace klingd::storage {

struct import_report {
    std::size_t read = 0;               // jobs in the SQLite database
    std::size_t imported = 0;           // new in the cluster
    std::size_t already = 0;            // there already, the same content
    std::size_t history = 0;            // history lines copied with the jobs imported
    std::vector<std::string> conflicts; // ids the cluster has with other content
};

boost::asio::awaitable<core::result<import_report>> import_sqlite(const std::string& path,
                                                                  pg_repository& into);

} // namespace klingd::storage
