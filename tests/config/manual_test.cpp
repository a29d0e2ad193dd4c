// The manual klingd.toml(5) against the loader: every key the loader takes is documented,
// no documented key is unknown, and each documented default is the one klingd uses
// (settings' defaults, as `klingd --check-config` prints them). The installed example
// configuration sets every key at that default too.
#include "config/loader.hpp"
#include "tests/support/child_process.hpp"

#include <gtest/gtest.h>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <toml++/toml.h>

namespace {

using namespace klingd;

// "SECTION.KEY" -> default text, from the scdoc source: keys are lines "*key* = default"
// under "# TOP LEVEL" or "## [section]" ("## [models."SLUG"]" gives "models.SLUG").
std::map<std::string, std::string> documented_keys(const std::string& scd) {
    std::map<std::string, std::string> out;
    std::istringstream in(scd);
    std::string line, section;
    bool in_keys = false;
    const std::regex key_line(R"(^\*([a-z_]+)\* = (.+)$)");
    const std::regex table_line(R"(^## \[(.+)\]$)");
    std::smatch m;
    while (std::getline(in, line)) {
        if (line == "# TOP LEVEL") {
            in_keys = true;
            section.clear();
        } else if (line.rfind("# ", 0) == 0 && line != "# TABLES") {
            in_keys = false;
        } else if (std::regex_match(line, m, table_line)) {
            section = m[1].str() == R"(models."SLUG")" ? "models.SLUG" : m[1].str();
        } else if (in_keys && std::regex_match(line, m, key_line)) {
            auto key = section.empty() ? m[1].str() : section + "." + m[1].str();
            EXPECT_TRUE(out.emplace(key, m[2].str()).second) << key << " is documented twice";
        }
    }
    return out;
}

// "SECTION.KEY" -> value, from render_settings' TOML ("# ..." comment lines skipped).
std::map<std::string, std::string> rendered_keys(const std::string& toml) {
    std::map<std::string, std::string> out;
    std::istringstream in(toml);
    std::string line, section;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#')
            continue;
        if (line.front() == '[') {
            section = line.substr(1, line.size() - 2);
            if (section.rfind("models.", 0) == 0)
                section = "models.SLUG";
            continue;
        }
        auto eq = line.find(" = ");
        auto key = line.substr(0, eq);
        out[section.empty() ? key : section + "." + key] = line.substr(eq + 3);
    }
    return out;
}

std::string manual() {
    return test::read_file(std::string(KLINGD_SOURCE_DIR) + "/docs/man/klingd.toml.5.scd");
}

TEST(manual, documents_every_key_the_loader_takes_and_no_other) {
    auto doc = documented_keys(manual());
    ASSERT_GT(doc.size(), 30u) << "the manual's keys were not found: has its layout changed?";
    std::set<std::string> known;
    for (auto& k : config::known_keys())
        known.insert(k);
    for (auto& k : known)
        EXPECT_TRUE(doc.count(k)) << k << " is not documented in docs/man/klingd.toml.5.scd";
    for (auto& [k, v] : doc)
        EXPECT_TRUE(known.count(k)) << k << " is documented but the loader does not know it";
}

TEST(manual, gives_the_defaults_klingd_uses) {
    config::settings defaults;
    // A model's table, as one not named in the defaults gets it.
    defaults.models = {{"SLUG", config::model_settings{}}};
    auto rendered = rendered_keys(config::render_settings(defaults));
    auto doc = documented_keys(manual());
    for (auto& [k, v] : doc) {
        auto it = rendered.find(k);
        ASSERT_NE(it, rendered.end()) << k << " is not in the effective configuration";
        EXPECT_EQ(v, it->second) << k << ": the manual says " << v << ", klingd uses "
                                 << it->second;
    }
}

TEST(manual, example_configuration_sets_every_key_at_its_default) {
    auto path = std::string(KLINGD_SOURCE_DIR) + "/examples/klingd.toml";
    auto env = [](const std::string& n) -> std::optional<std::string> {
        if (n == "SEGMIND_API_KEY")
            return "sk-example";
        return std::nullopt;
    };
    auto loaded = config::load_settings(path, env);
    ASSERT_TRUE(loaded.value) << (loaded.errors.empty() ? "" : loaded.errors.front());
    config::settings defaults;
    auto example = rendered_keys(config::render_settings(*loaded.value));
    auto expected = rendered_keys(config::render_settings(defaults));
    example.erase("cluster.node"); // filled in at load: the host's name
    expected.erase("cluster.node");
    EXPECT_EQ(example, expected);
    // And names each key, in its own table: a key left out would also show its default.
    auto doc = toml::parse_file(path);
    for (auto& k : config::known_keys()) {
        bool set = false;
        if (k.starts_with("models.SLUG.")) {
            auto name = k.substr(std::string("models.SLUG.").size());
            if (auto* models = doc["models"].as_table())
                for (auto& [slug, table] : *models)
                    set = set || (table.is_table() && table.as_table()->contains(name));
        } else {
            set = static_cast<bool>(doc.at_path(k));
        }
        EXPECT_TRUE(set) << k << " is not set in examples/klingd.toml";
    }
}

} // namespace
