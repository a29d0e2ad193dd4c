// Parameter checks for the two emulated models, as their pages document them
// (spec/segmind-v2.md). Unknown keys are accepted, as Segmind does.
#pragma once

#include <boost/json/object.hpp>
#include <string>

namespace klingd::sim {

inline constexpr const char* kling_o1 = "kling-o1";
inline constexpr const char* kling_o1_video_edit = "kling-o1-video-to-video-edit";

// Returns the first problem with a kling-o1 body, or the empty string when it is valid.
std::string check_kling_o1(const boost::json::object& body);
// Returns the first problem with a kling-o1-video-to-video-edit body, or the empty string.
std::string check_video_edit(const boost::json::object& body);

} // namespace klingd::sim
