# The binary's linkage and the packages (packaging/, systemd/).
#
# edgevirtd_linkage: the DT_NEEDED entries of edgevirtd are within the allow-list that
# cmake/EdgevirtStaticDeps.cmake computed (libvirt, libsystemd, libcurl, OpenSSL, what those
# load anyway, glibc), and libstdc++/libgcc_s are not NEEDED.
if(TARGET edgevirtd AND EDGEVIRT_STATIC_DEPS AND NOT EDGEVIRT_SANITIZE)
  add_test(NAME edgevirtd_linkage
    COMMAND ${PROJECT_SOURCE_DIR}/tests/package/check-linkage.sh $<TARGET_FILE:edgevirtd>
            ${EDGEVIRT_LINKAGE_ALLOWED})
  set_tests_properties(edgevirtd_linkage PROPERTIES LABELS "unit;package" TIMEOUT 60)
endif()
