# Fails when a C++ file of include/ src/ apps/ tests/ bench/ python/ examples/ is not formatted
# with the repository's .clang-format: clang-format --dry-run --Werror on each, listing the files.
# Fix with: clang-format -i $(git ls-files '*.cpp' '*.h')
set(_files)
foreach(_dir include src apps tests bench python examples)
  file(GLOB_RECURSE _found "${ROOT}/${_dir}/*.cpp" "${ROOT}/${_dir}/*.h")
  list(APPEND _files ${_found})
endforeach()
list(LENGTH _files _count)
if(_count EQUAL 0)
  message(FATAL_ERROR "no C++ files under ${ROOT}")
endif()
execute_process(COMMAND ${CLANG_FORMAT} --dry-run --Werror ${_files}
                WORKING_DIRECTORY ${ROOT} RESULT_VARIABLE _rc ERROR_VARIABLE _err)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "${_err}\nNot formatted with .clang-format (see above); fix with: "
                      "clang-format -i $(git ls-files '*.cpp' '*.h')")
endif()
message(STATUS "${_count} files formatted")
