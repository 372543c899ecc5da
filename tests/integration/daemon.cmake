# Integration tests of the real edgevirtd binary (daemon/). Both run as root in a private mount
# namespace (`unshare -m --propagation private`): they mount tmpfs over host paths (/run,
# /etc/edgevirt, the journal directories), which then stays invisible to the host and vanishes
# with the test. The tests check that they really are in a namespace of their own before they
# mount anything (and unshare themselves when started without the wrapper).
find_program(EDGEVIRT_UNSHARE unshare REQUIRED)
set(EDGEVIRT_PRIVATE_MOUNTS ${EDGEVIRT_UNSHARE} --mount --propagation private)

foreach(test daemon_notify_test daemon_journal_test)
  edgevirt_add_test(NAME ${test} SOURCES ${test}.cc
    LIBS edgevirt_common nlohmann_json::nlohmann_json
    LABELS integration TIMEOUT 60 WRAPPER ${EDGEVIRT_PRIVATE_MOUNTS})
  target_compile_definitions(${test} PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>")
  add_dependencies(${test} edgevirtd)
endforeach()
