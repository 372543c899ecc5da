# The binary's linkage and the packages (packaging/, systemd/).
#
# edgevirtd_linkage: the DT_NEEDED entries of edgevirtd are within the allow-list that
# cmake/EdgevirtStaticDeps.cmake computed (libvirt, libsystemd, libcurl, OpenSSL, what those
# load anyway, glibc), and libstdc++/libgcc_s are not NEEDED.
if(TARGET edgevirtd AND EDGEVIRT_STATIC_DEPS AND NOT EDGEVIRT_SANITIZE)
  add_test(NAME edgevirtd_linkage
    COMMAND ${PROJECT_SOURCE_DIR}/tests/package/check-linkage.sh $<TARGET_FILE:edgevirtd>
            ${EDGEVIRT_LINKAGE_ALLOWED})
  set_tests_properties(edgevirtd_linkage PROPERTIES LABELS "lint;package" TIMEOUT 60)
endif()

# package_test: builds the DEB and the RPM from this build directory's edgevirtd (no second
# compile), installs the DEB on this machine (root), runs the installed unit's ExecStart,
# kubectl over TLS, upgrade, remove, purge; inspects the RPM. RUN_SERIAL: it installs into the
# host and listens on port 8443 (in a network namespace of its own).
if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/package_test.cc)
  edgevirt_add_test(NAME package_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/package_test.cc
    LIBS edgevirt_common nlohmann_json::nlohmann_json Threads::Threads
    LABELS integration package TIMEOUT 300 RUN_SERIAL)
  target_compile_definitions(package_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>")
  add_dependencies(package_test edgevirtd)
endif()
