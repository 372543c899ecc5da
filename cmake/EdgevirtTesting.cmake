# Test helpers. Catch2 v2 (Debian 12) and v3 (newer distros) are both accepted; tests include
# "tests/support/catch.h", which picks the right header.
if(NOT EDGEVIRT_BUILD_TESTS)
  function(edgevirt_add_test)
  endfunction()
  return()
endif()

enable_testing()
find_package(Catch2 REQUIRED)
if(Catch2_VERSION VERSION_GREATER_EQUAL 3)
  set(EDGEVIRT_CATCH_LIBS Catch2::Catch2WithMain)
  set(EDGEVIRT_CATCH_DEFS EDGEVIRT_CATCH3=1)
else()
  add_library(edgevirt_catch_main STATIC ${PROJECT_SOURCE_DIR}/tests/support/catch_main.cc)
  target_link_libraries(edgevirt_catch_main PUBLIC Catch2::Catch2)
  target_include_directories(edgevirt_catch_main PUBLIC ${PROJECT_SOURCE_DIR})
  set(EDGEVIRT_CATCH_LIBS edgevirt_catch_main)
  set(EDGEVIRT_CATCH_DEFS "")
endif()

# edgevirt_add_test(NAME name SOURCES a.cc ... LIBS lib ... LABELS unit|integration ...
#                   [TIMEOUT seconds] [WRAPPER cmd ...] [ARGS ...] [RUN_SERIAL])
# Builds one Catch2 binary and registers it as one CTest test. Exit code 77 means "skipped"
# and is used only for hardware the machine lacks.
function(edgevirt_add_test)
  cmake_parse_arguments(T "RUN_SERIAL" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS;WRAPPER;ARGS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} ${EDGEVIRT_CATCH_LIBS})
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${T_NAME} PRIVATE ${EDGEVIRT_CATCH_DEFS}
    EDGEVIRT_SOURCE_DIR="${PROJECT_SOURCE_DIR}" EDGEVIRT_BINARY_DIR="${PROJECT_BINARY_DIR}")
  add_test(NAME ${T_NAME} COMMAND ${T_WRAPPER} $<TARGET_FILE:${T_NAME}> ${T_ARGS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    SKIP_RETURN_CODE 77)
  if(T_RUN_SERIAL)
    set_tests_properties(${T_NAME} PROPERTIES RUN_SERIAL TRUE)
  endif()
endfunction()
