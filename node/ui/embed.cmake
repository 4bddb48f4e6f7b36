# Turns the console's files into C arrays (run by CMake at build time, so
# no xxd or other tool is needed):
#
#   cmake -DSRC=<node/ui> -DOUT=<ui_assets.c> -DLIST=<ui_files.txt> -P embed.cmake
#
# LIST names the files, one a line, as paths relative to SRC; each becomes an entry of kp_ui_assets
# (ui_assets.h) with its Content-Type (from the extension) and an ETag (the
# first 16 hex digits of its SHA-256).
cmake_minimum_required(VERSION 3.16)
set(types_html "text/html; charset=utf-8")
set(types_css "text/css; charset=utf-8")
set(types_js "text/javascript; charset=utf-8")
set(types_mjs "text/javascript; charset=utf-8")
set(types_svg "image/svg+xml")
set(types_json "application/json")
set(types_png "image/png")
set(types_ico "image/x-icon")

file(STRINGS "${LIST}" FILES)
set(body "/* Generated from node/ui/ by node/ui/embed.cmake: do not edit. */\n")
string(APPEND body "#include \"ui_assets.h\"\n\n")
set(table "")
set(i 0)
foreach(f IN LISTS FILES)
  get_filename_component(ext "${f}" LAST_EXT)
  string(SUBSTRING "${ext}" 1 -1 ext)
  if(NOT DEFINED types_${ext})
    message(FATAL_ERROR "embed.cmake: no Content-Type known for ${f}; add one for .${ext}")
  endif()
  file(READ "${SRC}/${f}" hex HEX)
  file(SHA256 "${SRC}/${f}" sum)
  string(SUBSTRING "${sum}" 0 16 etag)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  # 16 bytes a line
  string(REGEX REPLACE "((0x..,){16})" "\\1\n" bytes "${bytes}")
  string(APPEND body "static const unsigned char asset_${i}[] = {\n${bytes}0};\n")
  string(APPEND table "    {\"${f}\", \"${types_${ext}}\", \"${etag}\", asset_${i}, ${len}},\n")
  math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "\nconst struct kp_ui_asset kp_ui_assets[] = {\n${table}};\n")
string(APPEND body "const size_t kp_ui_n_assets = ${i};\n")
file(WRITE "${OUT}.tmp" "${body}")
configure_file("${OUT}.tmp" "${OUT}" COPYONLY) # rewritten only when it differs
file(REMOVE "${OUT}.tmp")
