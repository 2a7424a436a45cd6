set -e
D=$(mktemp -d); cd $D
/work/main/.venv/bin/python - <<'PY'
import sys; sys.path.insert(0,'/work/main/tests')
from conftest import make_photo
from PIL import Image
w,h=640,480
for s in range(6): make_photo(f"photos/img{s}.jpg", size=(w,h), seed=200+s)
Image.open("photos/img0.jpg").resize((w//2,h//2), Image.LANCZOS).save("photos/img0_half.jpg", quality=85)
dx,dy=round(w*0.05),round(h*0.05); Image.open("photos/img1.jpg").crop((dx//2,dy//2,w-dx//2,h-dy//2)).save("photos/img1_crop.jpg", quality=70)
Image.open("photos/img2.jpg").save("photos/img2_q60.jpg", quality=60)
PY
for t in $THRESHOLDS; do rm -rf out idx; /work/main/.venv/bin/copyscan dedupe ./photos --model $MODEL --threshold $t -j 0 -q --index-dir idx -o out >/dev/null 2>&1; echo "$t: $(cut -d, -f1,2 out/groups.csv | tail -n +2 | tr '\n' ' ' | sed 's#/[^ ]*/photos/##g')"; done
