// What SIGHUP may change without a restart: the budget, timeouts, limits, poll
// intervals, model priors, the log level and the API key. Folders, the socket,
// the database, base_url and ca_file need a restart; a change there is reported
// and not applied.
#pragma once

#include "config/settings.hpp"

#include <string>
#include <vector>

namespace klingd::config {

// Copies the reloadable settings of fresh into current. Returns one line per
// change (applied, or needing a restart); never the API key itself.
std::vector<std::string> apply_reload(settings& current, const settings& fresh);

} // namespace klingd::config
