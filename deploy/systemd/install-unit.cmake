# install-unit.cmake: installs one systemd unit of deploy/systemd/ with the paths of this
# installation (run by `cmake --install`, from the install(CODE) rules of the top-level
# CMakeLists.txt; docs/install.md).
#
# The units in the source tree name the places of a hand installation (ExecStart=
# /usr/local/bin/..., /etc/...; tests/integration/test_systemd.py checks that line). The
# installed copy names where this installation put the binary (the sbindir) and its
# configuration (the sysconfdir), by the rule install(FILES) follows for them: a relative
# directory lies under the install-time prefix, an absolute one stays (the Debian build
# passes -DCMAKE_INSTALL_SYSCONFDIR=/etc). Only directive lines change, never comments; a
# unit in which nothing was replaced is an error, so a changed ExecStart= cannot ship a
# wrong path. After Description= the installed unit gains Documentation=man:LF_MAN_PAGE:
# the source tree's copy cannot name it, since `systemd-analyze verify` checks that the
# page is installed.
#
# In: LF_UNIT_SOURCE, LF_UNIT_WORKDIR, LF_SBINDIR, LF_SYSCONFDIR (relative or absolute, as
# configured), LF_MAN_PAGE; CMAKE_INSTALL_PREFIX and DESTDIR as `cmake --install` sets them.

function(lf_full_dir ret dir)
  if(IS_ABSOLUTE "${dir}")
    set(full "${dir}")
  else()
    set(full "${CMAKE_INSTALL_PREFIX}/${dir}")
  endif()
  string(REGEX REPLACE "/+" "/" full "${full}")
  set(${ret} "${full}" PARENT_SCOPE)
endfunction()

lf_full_dir(sbindir "${LF_SBINDIR}")
lf_full_dir(sysconfdir "${LF_SYSCONFDIR}")
lf_full_dir(unitdir "lib/systemd/system")

get_filename_component(name "${LF_UNIT_SOURCE}" NAME)
file(STRINGS "${LF_UNIT_SOURCE}" lines)
set(text "")
set(replaced 0)
foreach(line IN LISTS lines)
  if(NOT line MATCHES "^[ \t]*[#;]" AND line MATCHES "=")
    set(before "${line}")
    string(REPLACE "/usr/local/bin/" "${sbindir}/" line "${line}")
    # /etc/ at the start of a value or of an EnvironmentFile=-/etc/... path
    string(REGEX REPLACE "([=-])/etc/" "\\1${sysconfdir}/" line "${line}")
    if(NOT line STREQUAL before)
      math(EXPR replaced "${replaced} + 1")
    endif()
  endif()
  string(APPEND text "${line}\n")
  if(line MATCHES "^Description=")
    string(APPEND text "Documentation=man:${LF_MAN_PAGE}\n")
  endif()
endforeach()
if(replaced EQUAL 0)
  message(FATAL_ERROR "${LF_UNIT_SOURCE}: no installed path to write (no ExecStart= "
                      "/usr/local/bin/...): install-unit.cmake needs updating")
endif()

file(MAKE_DIRECTORY "${LF_UNIT_WORKDIR}")
file(WRITE "${LF_UNIT_WORKDIR}/${name}" "${text}")
file(INSTALL DESTINATION "${unitdir}" TYPE FILE
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
     FILES "${LF_UNIT_WORKDIR}/${name}")
